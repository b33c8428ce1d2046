"""Pretrained weights by name: every public ImageNet ViT weight set, downloaded, verified and cached.

    python -m ms_vit.weights                       # the names, with source, top-1, image size, whether cached
    python -m ms_vit.weights NAME                  # one weight set: where it comes from, where it is cached
    python -m ms_vit.weights download NAME [NAME]  # fetch ahead (e.g. on a machine with internet, then copy the cache)

``create_model(NAME, pretrained=True)`` and ``--pretrained NAME`` (train.py, eval.py, infer.py) load them. The
names are ``<ms_vit variant>.<source>`` (``vit_b_16_224.mindvision``: the MindSpore tutorial's checkpoint) and, for
timm's weights, timm's own (``vit_base_patch16_224.augreg2_in21k_ft_in1k``); a bare variant or timm architecture
name picks its first weight set in the table. The table is data: ``weights.tsv`` beside this file (a row each:
name, source, variant, image size, layout, preprocessing, top-1/top-5 as published, URL, sha256 where published,
licence); ``MS_VIT_WEIGHTS_TABLE`` names more tables in the same columns (your own weight sets, your own mirror).

A download goes into a temporary file beside its cache entry (``$MS_VIT_CACHE/weights/<name>/<file>``, default
``~/.cache/ms_vit``) and is renamed only after it is verified; nothing is loaded that is not pinned by a full sha256:

* the row's own sha256 (the publisher's, recorded in the table with where it comes from: docs/weights.md);
* or the one you give: ``NAME@sha256:<64 hex digits>`` wherever a name is taken (``--pretrained``,
  ``create_model``, ``python -m ms_vit.weights download``);
* or, for a row without one, trust on first use when you ask for it (``MS_VIT_TRUST_ON_FIRST_USE=1``): the file the
  server sends is accepted, and the sha256 recorded is printed for you to compare or pin.

A row without a sha256 is otherwise refused before anything is downloaded. The 8 hex digits of the sha256 in
mindcv's and torch hub's file names (a 32-bit check, forgeable) and the file's layout and shapes (it reads in its
layout and holds the variant its name says) are checked too, never instead. The sha256 is then recorded
(``<file>.sha256``) and checked at every later use; the cache folder and files must be the user's own
(``files.check_private``). A cut or corrupted download is named and removed; an entry that is there is not
downloaded again. Transport (``ms_vit.downloads``): https only, certificates verified, redirects never leave https,
30 s without data ends a download. Offline: one line naming the URL and the path to put a file fetched by other
means. Mirrors: each host's base URL can be replaced by one environment variable (``HOSTS``): ``HF_ENDPOINT`` for
Hugging Face (its own convention), ``MS_VIT_MINDSPORE_MIRROR`` for MindSpore's download hosts; a mirror must be
https (``MS_VIT_ALLOW_HTTP_MIRROR=1`` allows a local http one).
"""
import csv
import dataclasses
import difflib
import hashlib
import os
import re
import shutil
import sys
import tempfile
from typing import Dict, List, Optional

from ..downloads import HOSTS, DownloadError, download, mirrored
from ..files import CacheError, cache_root, check_private, private_cache, write_atomically
from ..models.vit import VARIANTS
from . import convert
from .checkpoint import CheckpointError, config_from_shapes

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights.tsv")
EXTRA_TABLES = "MS_VIT_WEIGHTS_TABLE"
# The layouts a source writes (a row's layout "auto": detected among these)
SOURCE_LAYOUTS = {"mindvision": ("mindspore_tutorial", "mindvision"), "mindcv": ("mindcv", "mindcv_v0_2"),
                  "model_zoo": ("model_zoo",), "timm": ("timm",), "jax": ("jax",), "torchvision": ("torchvision",)}
_HASH_PREFIX = re.compile(r"-([0-9a-f]{8})(?:-[^/]*)?\.(?:ckpt|pth|pt|bin)$")     # mindcv, torch hub file names
_PINNED = re.compile(r"^(?P<name>[^@]+)@sha256:(?P<sha256>[0-9a-fA-F]{64})$")      # NAME@sha256:<hex>
TRUST_ON_FIRST_USE = "MS_VIT_TRUST_ON_FIRST_USE"
_COLUMNS = ("name", "source", "variant", "image_size", "layout", "preprocess", "crop_pct", "top1", "top5", "url",
            "sha256", "licence")


class WeightsError(ValueError):
    """A weight set that cannot be had: unknown, not downloadable, or not what it should be; the message says why."""


@dataclasses.dataclass(frozen=True)
class WeightSet:
    """One row of the table."""
    name: str
    source: str
    variant: str
    image_size: int
    layout: str
    preprocess: str
    crop_pct: Optional[float]
    top1: Optional[float]
    top5: Optional[float]
    url: str
    sha256: str
    licence: str

    @property
    def file_name(self) -> str:
        return self.url.rstrip("/").split("/")[-1]

    @property
    def path(self) -> str:
        """Where the verified file is cached."""
        return os.path.join(cache_root(), "weights", self.name, self.file_name)

    @property
    def download_url(self) -> str:
        """The URL, with its host replaced by the mirror its environment variable names (``downloads.HOSTS``)."""
        return mirrored(self.url)

    @property
    def hash_prefix(self) -> str:
        """The 8 hex digits of the sha256 that mindcv's and torch hub's file names carry, or ""."""
        match = _HASH_PREFIX.search(self.file_name)
        return match.group(1) if match else ""

    def config_fields(self, pretrained: "convert.Pretrained") -> dict:
        """The ``ViTConfig`` fields these weights need: the layout's numerics, the row's preprocessing."""
        fields = dict(pretrained.config, **convert.PREPROCESS[self.preprocess])
        if self.crop_pct is not None:
            fields["crop_pct"] = self.crop_pct
        return fields


def _number(text: str) -> Optional[float]:
    return float(text) if text.strip() else None


def read_table(path: str) -> List[WeightSet]:
    with open(path, encoding="utf-8") as f:
        rows = csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t")
        if tuple(rows.fieldnames or ()) != _COLUMNS:
            raise WeightsError(f"{path}: a weights table has the columns {', '.join(_COLUMNS)} (tab-separated)")
        return [WeightSet(r["name"], r["source"], r["variant"], int(r["image_size"]), r["layout"], r["preprocess"],
                          _number(r["crop_pct"]), _number(r["top1"]), _number(r["top5"]), r["url"], r["sha256"],
                          r["licence"]) for r in rows]


def registry() -> Dict[str, WeightSet]:
    """Every weight set by name: ``weights.tsv``, then the tables ``MS_VIT_WEIGHTS_TABLE`` names (``:``-separated),
    whose rows come first."""
    extra = [p for p in os.environ.get(EXTRA_TABLES, "").split(os.pathsep) if p]
    found = {}
    for path in extra + [TABLE]:
        for entry in read_table(path):
            found.setdefault(entry.name, entry)
    return found


def find(name: str) -> WeightSet:
    """The weight set ``name`` names: a full name, or a variant / timm architecture (its first weight set);
    ``NAME@sha256:<hex>`` pins it to the file with that sha256."""
    pinned = _PINNED.match(name)
    if pinned:
        entry, given = find(pinned.group("name")), pinned.group("sha256").lower()
        if entry.sha256 and entry.sha256 != given:
            raise WeightsError(f"{name}: the sha256 given is not the one published for {entry.name} ({entry.sha256})")
        return dataclasses.replace(entry, sha256=given)
    if "@" in name:
        raise WeightsError(f"{name!r}: pin a weight set as NAME@sha256:<its 64 hex digits>")
    table = registry()
    if name in table:
        return table[name]
    first = next((entry for key, entry in table.items() if key.startswith(name + ".")), None)
    if first is not None:
        return first
    close = difflib.get_close_matches(name, list(table), n=6, cutoff=0.6)
    hint = f"; close: {', '.join(close)}" if close else ""
    raise WeightsError(f"no pretrained weights named {name!r}{hint} (python -m ms_vit.weights lists them all)")


def resolve(value: str):
    """``--pretrained VALUE``: ``(weight set name, None)`` for a name in the table, ``(None, path)`` for a file."""
    if os.path.isfile(value):
        return None, value
    if os.path.splitext(value)[1].lower() in (".ckpt", ".safetensors", ".npz", ".pth", ".pt", ".bin") \
            or os.sep in value:
        raise CheckpointError(f"checkpoint not found: {value}")
    return find(value).name, None


def is_weight_name(name: Optional[str]) -> bool:
    """Whether ``name`` names a weight set rather than just a variant (``vit_b_16_224``)."""
    return bool(name) and name not in VARIANTS and "." in name


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(entry: WeightSet, path: str, digest: str) -> None:
    """Raise ``WeightsError`` unless the file at ``path`` (sha256 ``digest``) is the weight set's."""
    if entry.sha256 and digest != entry.sha256:
        raise WeightsError(f"sha256 {digest}, published {entry.sha256}")
    if entry.hash_prefix and not digest.startswith(entry.hash_prefix):
        raise WeightsError(f"sha256 {digest[:8]}..., the file name says {entry.hash_prefix}...")
    try:
        pretrained = convert.read_pretrained(path, None if entry.layout == "auto" else entry.layout)
        held = config_from_shapes({k: v.shape for k, v in pretrained.params.items()})
    except (convert.ConversionError, CheckpointError) as exc:
        raise WeightsError(str(exc).replace(path, "the file")) from None
    allowed = SOURCE_LAYOUTS.get(entry.source, (pretrained.layout.name,))
    if pretrained.layout.name not in allowed:
        raise WeightsError(f"it is in the {pretrained.layout.name} layout, not {entry.source}'s")
    want = VARIANTS.get(entry.variant, {})
    arch = {k: getattr(held, k) for k in ("embed_dim", "depth", "mlp_dim", "patch_size")}
    if any(want.get(k, v) != v for k, v in arch.items()) or held.image_size != entry.image_size:
        raise WeightsError(f"it holds a ViT of {arch} at {held.image_size} px, not {entry.variant} at "
                           f"{entry.image_size} px")


def trust(entry: WeightSet) -> str:
    """How a file of ``entry`` is trusted: ``"sha256"`` (published or given) or ``"first use"`` (asked for); raises
    ``WeightsError`` saying how to proceed when neither."""
    if entry.sha256:
        return "sha256"
    if os.environ.get(TRUST_ON_FIRST_USE, "0") == "1":
        return "first use"
    raise WeightsError(f"{entry.name} has no published sha256, so its download cannot be verified: give the sha256 "
                       f"you expect as {entry.name}@sha256:<64 hex digits>, or set {TRUST_ON_FIRST_USE}=1 to accept "
                       "the file the server sends and record its sha256 (docs/security.md)")


def _cache_folder(entry: WeightSet) -> str:
    try:
        return private_cache("weights", entry.name)
    except CacheError as exc:
        raise WeightsError(str(exc)) from None
    except OSError as exc:
        raise WeightsError(f"cannot write the weights cache {os.path.dirname(entry.path)}: {exc.strerror}; set "
                           "MS_VIT_CACHE to a writable folder") from None


def _private(path: str) -> None:
    try:
        check_private(path)
    except CacheError as exc:
        raise WeightsError(str(exc)) from None


def fetch(entry: WeightSet) -> str:
    """The path of the weight set's verified file, downloaded first if it is not cached (see the module
    docstring)."""
    _cache_folder(entry)
    path, record = entry.path, entry.path + ".sha256"
    if os.path.lexists(path):
        _private(path)
        digest = sha256_of(path)
        if os.path.lexists(record):
            _private(record)
            with open(record) as f:
                recorded = f.read().strip()
            if recorded == digest and entry.sha256 and digest != entry.sha256:
                raise WeightsError(f"{path} is not {entry.name}: sha256 {digest}, published {entry.sha256}; remove "
                                   "it and its .sha256")
            if recorded == digest:
                return path
            print(f"{path} changed since it was verified (sha256 {digest}): removed; downloading it again",
                  file=sys.stderr)
            os.remove(path)
        else:                                               # placed by hand: verified as a download is
            how = trust(entry)
            try:
                _check(entry, path, digest)
            except WeightsError as exc:
                raise WeightsError(f"{path} is not {entry.name}: {exc}; remove it or replace it") from None
            _record(entry, record, digest, how)
            return path
    how = trust(entry)
    _record(entry, record, _download(entry, path), how)
    return path


def _record(entry: WeightSet, path: str, digest: str, how: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            os.chmod(tmp, 0o644)                   # readable, writable by the user alone whatever the umask
            f.write(digest + "\n")
    write_atomically(path, write)
    if how == "first use":
        print(f"{entry.name}: trusted on first use ({TRUST_ON_FIRST_USE}=1); its sha256 {digest} is recorded in "
              f"{path}: compare it with the publisher's, or pin it as {entry.name}@sha256:{digest}", file=sys.stderr)


def _download(entry: WeightSet, path: str) -> str:
    """Download into a folder beside ``path``, verify, then rename into place; remove everything on failure.
    Returns the file's sha256."""
    url = entry.download_url
    staging = tempfile.mkdtemp(prefix=".download-", dir=os.path.dirname(path))
    part = os.path.join(staging, entry.file_name)
    try:
        try:
            digest = download(url, part, label=entry.name)
        except DownloadError as exc:
            raise WeightsError(_download_failure(entry, url, path, str(exc))) from None
        os.chmod(part, 0o644)
        try:
            _check(entry, part, digest)
        except WeightsError as exc:
            raise WeightsError(f"the download of {entry.name} from {url} is damaged or not the published file: "
                               f"{exc}. It was removed; try again, or place the right file at {path}") from None
        os.replace(part, path)
        return digest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download_failure(entry: WeightSet, url: str, path: str, reason: str) -> str:
    if reason.startswith("cut off"):
        return (f"the download of {entry.name} from {url} was {reason} and removed: try again, or fetch the file by "
                f"other means and place it at {path}")
    variable = next((v for h, v in HOSTS.items() if entry.url.startswith(h + "/")), None)
    mirror = f", or point {variable} at a mirror" if variable else ""
    return (f"cannot download {entry.name} from {url} ({reason}): fetch that file by other means and place it at "
            f"{path}{mirror}")


def describe(entry: WeightSet) -> str:
    scores = " / ".join(f"{v:.2f} %" for v in (entry.top1, entry.top5) if v is not None) or "not published"
    checksum = entry.sha256 or (f"none published (the file name's {entry.hash_prefix}... is a 32-bit check only)"
                                if entry.hash_prefix else "none published") + \
        f": refused unless pinned ({entry.name}@sha256:<hex>) or {TRUST_ON_FIRST_USE}=1"
    return "\n".join([
        f"{entry.name}: {entry.variant} at {entry.image_size} px from {entry.source} ({entry.layout} layout)",
        f"  ImageNet-1k top-1 / top-5 as published: {scores}",
        f"  url: {entry.url}" + (f" (mirror: {entry.download_url})" if entry.download_url != entry.url else ""),
        f"  sha256: {checksum}",
        f"  licence: {entry.licence or 'not stated'}",
        f"  cache: {entry.path} ({'cached' if os.path.isfile(entry.path) else 'not cached'})"])


def listing() -> str:
    rows = [f"{'name':<46}{'source':<12}{'top-1':>7}{'image':>6}  cached"]
    for entry in registry().values():
        top1 = f"{entry.top1:.1f}" if entry.top1 is not None else "-"
        rows.append(f"{entry.name:<46}{entry.source:<12}{top1:>7}{entry.image_size:>6}  "
                    f"{'yes' if os.path.isfile(entry.path) else ''}")
    return "\n".join(rows)


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m ms_vit.weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("words", nargs="*", metavar="[download] NAME",
                        help="a name to describe, or 'download' and names to fetch; none: list them all")
    args = parser.parse_args(argv)
    try:
        if not args.words:
            print(listing())
        elif args.words[0] == "download":
            if len(args.words) == 1:
                raise WeightsError("download needs one or more names: python -m ms_vit.weights download NAME "
                                   "[NAME ...] (python -m ms_vit.weights lists them)")
            for name in args.words[1:]:
                entry = find(name)
                print(f"{entry.name}: {fetch(entry)}")
        else:
            for name in args.words:
                print(describe(find(name)))
        sys.stdout.flush()
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:              # `python -m ms_vit.weights | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
