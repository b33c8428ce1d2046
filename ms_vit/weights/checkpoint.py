"""Checkpoints: write them with the model's config, read them back, and load them into a ViT with
explanations instead of silent partial loads.

An ms_vit checkpoint is a plain MindSpore ``.ckpt`` (``mindspore.save_checkpoint``) whose parameter
names follow ``ms_vit.models.vit``; it carries one extra string entry, ``ms_vit_meta``: JSON with the
``ViTConfig`` (architecture, numerics, preprocessing), the class list and names, and training state.
Checkpoints without it (the public ``vit_b_16_224.ckpt``) load as well, given a variant name.
"""
import json
import logging
import math
import os
import re
from typing import Dict, Optional

import mindspore as ms
import numpy as np
from mindspore import nn

from ..files import write_atomically
from ..models.vit import ARCHS, ViTConfig, config_name
from . import ckpt_format

logger = logging.getLogger("ms_vit")

META_KEY = "ms_vit_meta"
# Names that belong to the network, as opposed to optimizer state or bookkeeping in the same file.
_MODEL_KEY = re.compile(r"^(cls|dist_token|pos_embedding|patch_embedding\.|transformer\.|norm\.|dense\.|dense_dist\.)")
_HEAD_KEYS = ("dense.weight", "dense.bias", "dense_dist.weight", "dense_dist.bias")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the network; the message says why."""


def save(net: nn.Cell, path: str, meta: Optional[dict] = None, extra_params=None, extra_values=None) -> None:
    """Write ``net``'s parameters (and ``extra_params``, a list of Parameters such as optimizer state, and
    ``extra_values``, a name -> int/float dict) with ``meta`` (at least ``{"config": ViTConfig.to_dict()}``) into
    ``path``, with a CRC that ``read`` checks.

    Atomic (``files.write_atomically``): ``path`` is complete or absent, the previous version kept until the new one
    is complete (``mindspore.save_checkpoint`` alone removes it first); a failed write (a full disk) leaves no
    temporary file and raises ``OSError``."""
    meta = dict(meta or {})
    meta.setdefault("config", net.config.to_dict())
    params = [{"name": p.name, "data": p} for p in net.get_parameters()]
    params += [{"name": p.name, "data": p} for p in (extra_params or [])]
    append = dict(extra_values or {}, **{META_KEY: json.dumps(meta)})

    def write(tmp):
        try:
            ms.save_checkpoint(params, tmp, append_dict=append, crc_check=True)
        except BaseException:
            partial = os.path.splitext(tmp)[0] + ".tmp"           # MindSpore's own temporary file
            if os.path.exists(partial):
                os.remove(partial)
            raise
    write_atomically(path, write)


def read(path: str, require_crc: bool = False):
    """Read a checkpoint: ``(params, meta)``, params a name -> numpy array dict (``BFloat16`` tensors as float32),
    meta a dict (empty for checkpoints not written by ms_vit). ``require_crc``: the file was written by ``save``
    (with a CRC), so one without a CRC is cut.

    The file is read by ``ckpt_format.read_entries``, which checks every length and shape against the file before
    it allocates (never ``mindspore.load_checkpoint``, which does not: a crafted file corrupts its heap), straight
    into one numpy array per tensor (peak memory: the weights once). Whatever is wrong with the file (empty,
    truncated, a CRC mismatch, lengths or dims that do not fit, metadata that is not JSON, encrypted) raises
    ``CheckpointError`` saying so."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")

    def damaged(reason):
        return CheckpointError(f"cannot read checkpoint {path}: the file is truncated or corrupted "
                               f"({os.path.getsize(path):,} bytes: {reason})")

    try:
        raw = ckpt_format.read_entries(path, require_crc)
    except ckpt_format.DamagedFile as exc:
        raise damaged(exc) from None
    except ckpt_format.UnsupportedFile as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except MemoryError:
        raise CheckpointError(f"cannot read checkpoint {path}: not enough memory for its "
                              f"{os.path.getsize(path):,} bytes") from None
    meta = {}
    if META_KEY in raw:
        text = raw.pop(META_KEY)
        try:
            meta = json.loads(text) if isinstance(text, str) else None
        except (ValueError, RecursionError):                  # not JSON, or nested deeper than Python recurses
            meta = None
        if not isinstance(meta, dict):
            raise damaged(f"its {META_KEY} entry is not a JSON object")
        problem = _meta_problem(meta)
        if problem:
            raise damaged(f"its {META_KEY} entry {problem}")
    params = {k: v for k, v in raw.items() if isinstance(v, np.ndarray)}
    return params, meta


# What the metadata's entries must be (train.py and the factory read them)
_META_TYPES = {"config": dict, "classes": list, "class_names": list, "epoch": int, "global_step": int,
               "steps_per_epoch": int, "num_train": int, "records": dict, "metrics": dict, "train_config": dict}


def _meta_problem(meta: dict) -> Optional[str]:
    """What is wrong with a checkpoint's metadata, or None."""
    for key, kind in _META_TYPES.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"has a {key} that is not a JSON {'object' if kind is dict else kind.__name__}"
    if meta.get("steps_per_epoch") is not None and meta["steps_per_epoch"] < 1 or \
            min(meta.get("global_step") or 0, meta.get("epoch") or 0) < 0:
        return "has a negative position"
    if any(not isinstance(name, str) for name in (meta.get("classes") or []) + (meta.get("class_names") or [])):
        return "has class names that are not strings"
    if "config" in meta:
        try:
            ViTConfig.from_dict(meta["config"])
        except (TypeError, ValueError) as exc:
            return f"has a config that is not valid ({exc})"
    return None


def network_params(params: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The entries of a checkpoint that belong to the network (not optimizer state or bookkeeping)."""
    return {k: v for k, v in params.items() if _MODEL_KEY.match(k)}


def config_from_shapes(shapes: Dict[str, tuple], **known) -> ViTConfig:
    """Infer a ``ViTConfig`` from parameter shapes (names in ms_vit's layout), DeiT's distillation token, LayerScale
    and class-slot-free position embedding included.

    The head count cannot be seen in the shapes; it comes from the variant table (or ``known``)."""
    try:
        embed_dim = shapes["cls"][-1]
        patch_size = shapes["patch_embedding.conv.weight"][-1]
        in_channels = shapes["patch_embedding.conv.weight"][1]
        distilled = "dist_token" in shapes
        tokens = shapes["pos_embedding"][1]
        prefix = 2 if distilled else 1
        no_embed_class = math.isqrt(tokens - prefix) ** 2 != tokens - prefix and math.isqrt(tokens) ** 2 == tokens
        grid = math.isqrt(tokens if no_embed_class else tokens - prefix)
        depth = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("transformer.layers."))
        mlp_dim = shapes["transformer.layers.0.1.cell.1.dense1.weight"][0]
        num_classes = shapes["dense.weight"][0] if "dense.weight" in shapes else 1000
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"not a ViT checkpoint in ms_vit's layout (no {exc})") from None
    num_heads = next((a["num_heads"] for a in ARCHS.values()
                      if (a["embed_dim"], a["depth"], a["mlp_dim"]) == (embed_dim, depth, mlp_dim)),
                     max(embed_dim // 64, 1))
    layer_scale = "transformer.layers.0.0.cell.2.gamma" in shapes
    values = dict(image_size=grid * patch_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                  num_heads=num_heads, mlp_dim=mlp_dim, num_classes=num_classes, in_channels=in_channels,
                  distilled=distilled, no_embed_class=no_embed_class, layer_scale_init=1e-6 if layer_scale else None)
    values.update(known)
    return ViTConfig(**values)


def describe(config: ViTConfig) -> str:
    name = config_name(config)
    arch = name or (f"ViT(dim {config.embed_dim}, depth {config.depth}, patch {config.patch_size}, "
                    f"image {config.image_size})")
    return f"{arch} with {config.num_classes} classes"


def resample_pos_embedding(pos_embedding: np.ndarray, new_grid: int, num_prefix: int = 1) -> np.ndarray:
    """Resample a (1, T + g*g, D) position embedding (T prefix tokens: class, distillation) to
    (1, T + new_grid**2, D).

    The prefix tokens' embeddings are kept apart; the g x g grid is resized with bicubic interpolation
    (a = -0.75, half-pixel centres, as ``torch.nn.functional.interpolate(mode="bicubic")`` and timm's
    ``resample_abs_pos_embed``). Resampling to the same grid is the identity."""
    cls_pos, grid_pos = pos_embedding[:, :num_prefix], pos_embedding[0, num_prefix:]
    old_grid = math.isqrt(grid_pos.shape[0])
    dim = grid_pos.shape[-1]
    resize = _bicubic_matrix(old_grid, new_grid)                                  # (new, old)
    grid = grid_pos.reshape(old_grid, old_grid, dim).astype(np.float64)
    grid = np.einsum("ph,hwd,qw->pqd", resize, grid, resize)                     # (new, new, D)
    grid = grid.reshape(1, new_grid * new_grid, dim).astype(pos_embedding.dtype)
    return np.concatenate([cls_pos, grid], axis=1)


def _bicubic_matrix(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
    """(out_size, in_size) matrix of 1-D bicubic interpolation weights with clamped borders."""
    def cubic(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
        if t < 2:
            return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
        return 0.0

    scale = in_size / out_size
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        src = (i + 0.5) * scale - 0.5
        base = math.floor(src)
        for k in range(base - 1, base + 3):
            weights[i, min(max(k, 0), in_size - 1)] += cubic(src - k)
    return weights


def load_into(net: nn.Cell, params: Dict[str, np.ndarray], source: str = "checkpoint") -> None:
    """Load ``params`` into ``net``, which must match name for name and shape for shape, except:

    * a different class count: the head is left as initialised (fine-tuning), announced;
    * a different image size: the position embedding is resampled to the new grid, announced.

    Anything else raises ``CheckpointError`` listing missing, unexpected and mis-shaped names and
    the variant that the checkpoint holds.
    """
    net_params = {p.name: p for p in net.get_parameters()}
    model_params = network_params(params)
    to_load = dict(model_params)
    notes = []
    ckpt_head = model_params.get("dense.weight")
    new_head = ckpt_head is not None and ckpt_head.shape != tuple(net_params["dense.weight"].shape)
    if new_head:
        for key in _HEAD_KEYS:
            to_load.pop(key, None)
        notes.append(f"{source}: head has {ckpt_head.shape[0]} classes, the model {net.config.num_classes}: "
                     f"head left newly initialised (fine-tuning)")
    pos = model_params.get("pos_embedding")
    want = tuple(net_params["pos_embedding"].shape)
    prefix = 0 if net.config.no_embed_class else net.config.num_prefix_tokens
    if pos is not None and pos.ndim == 3 and pos.shape != want and pos.shape[2] == want[2] \
            and pos.shape[1] > prefix and math.isqrt(pos.shape[1] - prefix) ** 2 == pos.shape[1] - prefix:
        new_grid = math.isqrt(want[1] - prefix)
        to_load["pos_embedding"] = resample_pos_embedding(pos, new_grid, prefix)
        old_grid = math.isqrt(pos.shape[1] - prefix)
        notes.append(f"{source}: position embedding resampled from a {old_grid}x{old_grid} to a "
                     f"{new_grid}x{new_grid} patch grid (bicubic)")

    missing = sorted(set(net_params) - set(to_load) - (set(_HEAD_KEYS) if new_head else set()))
    unexpected = sorted(set(to_load) - set(net_params))
    mis_shaped = sorted(k for k in set(to_load) & set(net_params)
                        if tuple(to_load[k].shape) != tuple(net_params[k].shape))
    if missing or unexpected or mis_shaped:
        raise CheckpointError(_mismatch_message(net, model_params, missing, unexpected, mis_shaped,
                                                net_params, to_load, source))
    for note in notes:
        logger.warning(note)
    for name, value in to_load.items():
        param = net_params[name]
        if value.dtype == ckpt_format.NP_TYPES.get(str(param.dtype)) and value.flags.c_contiguous:
            param.set_data(ms.Tensor.from_numpy(value))          # the checkpoint's buffer itself: no second copy
        else:
            param.set_data(ms.Tensor(value, dtype=param.dtype))


def _mismatch_message(net, model_params, missing, unexpected, mis_shaped, net_params, to_load, source):
    def listing(title, names, detail=lambda n: ""):
        if not names:
            return []
        shown = [f"    {n}{detail(n)}" for n in names[:8]]
        if len(names) > 8:
            shown.append(f"    ... and {len(names) - 8} more")
        return [f"  {title} ({len(names)}):"] + shown

    lines = [f"{source} does not fit {describe(net.config)}:"]
    lines += listing("missing from the checkpoint", missing)
    lines += listing("in the checkpoint but not in the model", unexpected)
    lines += listing("of another shape", mis_shaped,
                     lambda n: f": checkpoint {tuple(to_load[n].shape)}, model {tuple(net_params[n].shape)}")
    try:
        held = config_from_shapes({k: v.shape for k, v in model_params.items()})
        name = config_name(held)
        hint = (f"--model {name}" if name else
                f"embed_dim={held.embed_dim}, depth={held.depth}, patch_size={held.patch_size}, "
                f"image_size={held.image_size}")
        lines.append(f"  the checkpoint holds {describe(held)}: use {hint}")
    except CheckpointError:
        if not model_params:
            lines.append("  the checkpoint holds no ViT parameters at all")
    return "\n".join(lines)
