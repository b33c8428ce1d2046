"""Pretrained ViT weights in every public layout, read into ms_vit's names with the numerics and preprocessing they
were trained with.

    python -m ms_vit.weights.convert SRC --out CKPT [--layout auto] [--model NAME] [--preprocess auto]

``LAYOUTS`` is the table of layouts: how a file of each is recognised (a key only it has), how its names map onto
ms_vit's (``ms_vit.models.vit``), and the numerics and preprocessing of the networks that wrote it. MindSpore-trained
networks (MindSpore Vision and the tutorial, mindcv, the model zoo) compute with MindSpore's layer defaults: tanh
GELU, LayerNorm eps 1e-7; timm, DeiT and torchvision with exact (erf) GELU and eps 1e-6; the JAX release with flax's
defaults, tanh GELU and eps 1e-6.

Entries that are not model weights (optimizer moments ``adam_m.*``/``adam_v.*``/``moments.*``, ``global_step``,
``learning_rate``, loss-scale state...) are set aside, said in one line; ``ema.*`` copies are the weights with
``ema=True``. Anything else that has no place in the ViT stops the conversion with a list of it.

``read_pretrained`` is what ``create_model(checkpoint_path=...)``, train.py/eval.py/infer.py ``--pretrained`` and
``ms_vit.weights`` load with; ``convert`` writes an ms_vit checkpoint that records the variant, the class count,
the numerics and the preprocessing, so eval.py and infer.py need no flags.
"""
import argparse
import dataclasses
import logging
import os
import re
import sys
import zipfile
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..models.vit import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, ViT, variant_config
from . import checkpoint
from .checkpoint import CheckpointError

logger = logging.getLogger("ms_vit")

NUMERICS = {
    "mindspore": dict(gelu_approximate=True, layer_norm_eps=1e-7),     # nn.GELU() and nn.LayerNorm defaults
    "torch": dict(gelu_approximate=False, layer_norm_eps=1e-6),        # timm, DeiT, torchvision
    "flax": dict(gelu_approximate=True, layer_norm_eps=1e-6),          # nn.gelu (tanh) and nn.LayerNorm defaults
}
PREPROCESS = {
    # timm's augreg/orig ViT weights and the JAX release: mean/std 0.5; timm evaluates them at crop 0.9
    "inception": dict(mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.9, interpolation="bicubic"),
    # DeiT, and ImageNet-normalised weights in general
    "imagenet": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875, interpolation="bicubic"),
    # MindSpore Vision / the tutorial and the model zoo: resize to size + 32 (bilinear), centre crop
    "mindspore": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875, interpolation="bilinear"),
    # torchvision's ImageClassification preset: resize 256 (bilinear), crop 224; SWAG weights: bicubic, no margin
    "torchvision": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875, interpolation="bilinear"),
    "torchvision_swag": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=1.0, interpolation="bicubic"),
    # the JAX release resizes the whole image to the input size, mean/std 0.5
    "jax": dict(mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=1.0, interpolation="bilinear"),
}
# Not model weights: optimizer and training-loop state that MindSpore checkpoints carry
_STATE = re.compile(r"^(adam_m\.|adam_v\.|moments\.|moment1\.|moment2\.|accumulated\.|accu_grads\.|global_step$|"
                    r"learning_rate$|beta1_power$|beta2_power$|epoch_num$|step_num$|scale_sense$|micro_step$|"
                    r"current_iterator_step$|last_overflow_iterator_step$|step_stats$|opt/|optimizer\.|lr$)")


class ConversionError(ValueError):
    """Weights that cannot be converted; the message lists what does not map or fit."""


# name tables: (regular expression over a whole source name, ms_vit name); \1 is the block index
_BLOCK = "transformer.layers.\\1"
TIMM_NAMES = [
    (r"cls_token", "cls"),
    (r"dist_token", "dist_token"),
    (r"pos_embed", "pos_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embedding.conv.\1"),
    (r"blocks\.(\d+)\.norm1\.(?:weight|gamma)", _BLOCK + ".0.cell.0.gamma"),
    (r"blocks\.(\d+)\.norm1\.(?:bias|beta)", _BLOCK + ".0.cell.0.beta"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", _BLOCK + r".0.cell.1.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", _BLOCK + r".0.cell.1.out.\2"),
    (r"blocks\.(\d+)\.ls1\.gamma", _BLOCK + ".0.cell.2.gamma"),
    (r"blocks\.(\d+)\.norm2\.(?:weight|gamma)", _BLOCK + ".1.cell.0.gamma"),
    (r"blocks\.(\d+)\.norm2\.(?:bias|beta)", _BLOCK + ".1.cell.0.beta"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", _BLOCK + r".1.cell.1.dense1.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", _BLOCK + r".1.cell.1.dense2.\2"),
    (r"blocks\.(\d+)\.ls2\.gamma", _BLOCK + ".1.cell.2.gamma"),
    (r"norm\.(?:weight|gamma)", "norm.gamma"),
    (r"norm\.(?:bias|beta)", "norm.beta"),
    (r"head\.(weight|bias)", r"dense.\1"),
    (r"head_dist\.(weight|bias)", r"dense_dist.\1"),
]
_MS_VIT = r"(cls|pos_embedding|patch_embedding\..+|transformer\..+|norm\..+)"
MINDVISION_NAMES = [(r"backbone\.cls_token", "cls"), (r"backbone\." + _MS_VIT, r"\1"),
                    (r"head\.dense\.(weight|bias)", r"dense.\1")]
MINDCV_V0_2_NAMES = [(r"backbone\.cls_token", "cls"), (r"backbone\." + _MS_VIT, r"\1"),
                     (r"head\.classifier\.(weight|bias)", r"dense.\1")]
_TV_BLOCK = r"encoder\.layers\.encoder_layer_(\d+)\."
TORCHVISION_NAMES = [
    (r"class_token", "cls"),
    (r"conv_proj\.(weight|bias)", r"patch_embedding.conv.\1"),
    (r"encoder\.pos_embedding", "pos_embedding"),
    (_TV_BLOCK + r"ln_1\.weight", _BLOCK + ".0.cell.0.gamma"),
    (_TV_BLOCK + r"ln_1\.bias", _BLOCK + ".0.cell.0.beta"),
    (_TV_BLOCK + r"self_attention\.in_proj_(weight|bias)", _BLOCK + r".0.cell.1.qkv.\2"),
    (_TV_BLOCK + r"self_attention\.out_proj\.(weight|bias)", _BLOCK + r".0.cell.1.out.\2"),
    (_TV_BLOCK + r"ln_2\.weight", _BLOCK + ".1.cell.0.gamma"),
    (_TV_BLOCK + r"ln_2\.bias", _BLOCK + ".1.cell.0.beta"),
    (_TV_BLOCK + r"mlp\.(?:0|linear_1)\.(weight|bias)", _BLOCK + r".1.cell.1.dense1.\2"),
    (_TV_BLOCK + r"mlp\.(?:3|linear_2)\.(weight|bias)", _BLOCK + r".1.cell.1.dense2.\2"),
    (r"encoder\.ln\.weight", "norm.gamma"),
    (r"encoder\.ln\.bias", "norm.beta"),
    (r"heads\.head\.(weight|bias)", r"dense.\1"),
]
_ZOO_BLOCK = r"body\.layers\.(\d+)\."
MODEL_ZOO_NAMES = [
    (r"cls", "cls"),
    (r"pos_embedding", "pos_embedding"),
    (r"stem\.patch_to_embedding\.dense\.bias", "patch_embedding.conv.bias"),
    (_ZOO_BLOCK + r"([01])\.cell\.0\.(gamma|beta)", _BLOCK + r".\2.cell.0.\3"),
    (_ZOO_BLOCK + r"0\.cell\.1\.to_out\.(weight|bias)", _BLOCK + r".0.cell.1.out.\2"),
    (_ZOO_BLOCK + r"1\.cell\.1\.ff1\.dense\.(weight|bias)", _BLOCK + r".1.cell.1.dense1.\2"),
    (_ZOO_BLOCK + r"1\.cell\.1\.ff2\.dense\.(weight|bias)", _BLOCK + r".1.cell.1.dense2.\2"),
    (r"norm\.(gamma|beta)", r"norm.\1"),
]
_ZOO_QKV = re.compile(_ZOO_BLOCK + r"0\.cell\.1\.to_([qkv])\.(weight|bias)")


def _rename(state: Dict[str, np.ndarray], table) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """``state`` under ms_vit's names by ``table``; the names no row matches."""
    out, unmapped = {}, []
    for name, value in state.items():
        for pattern, target in table:
            if re.fullmatch(pattern, name):
                out[re.sub(pattern, target, name)] = value
                break
        else:
            unmapped.append(name)
    return out, unmapped


def from_table(table) -> Callable:
    return lambda state: _rename(state, table)


def from_model_zoo(state):
    """MindSpore model zoo (``official/cv/VIT``): q, k, v projections joined into one (3D, D); the Dense patch stem
    over (C, P, P)-ordered patch rows reshaped into the convolution's (D, C, P, P); the 1001-class head's rows
    0..999 (the ImageNet classes in sorted-wnid order; row 1000 is unused)."""
    rest = {k: v for k, v in state.items() if not _ZOO_QKV.fullmatch(k)
            and k not in ("stem.patch_to_embedding.dense.weight", "head.0.weight", "head.0.bias")}
    out, unmapped = _rename(rest, MODEL_ZOO_NAMES)
    stem = state.get("stem.patch_to_embedding.dense.weight")
    if stem is not None:
        patch = int(round((stem.shape[1] / 3) ** 0.5))
        out["patch_embedding.conv.weight"] = stem.reshape(stem.shape[0], 3, patch, patch)
    for part in ("weight", "bias"):
        head = state.get(f"head.0.{part}")
        if head is not None:
            out[f"dense.{part}"] = head[:1000] if head.shape[0] == 1001 else head
    blocks = sorted({int(m.group(1)) for m in map(_ZOO_QKV.fullmatch, state) if m})
    for i in blocks:
        for part in ("weight", "bias"):
            names = [f"body.layers.{i}.0.cell.1.to_{p}.{part}" for p in "qkv"]
            if all(n in state for n in names):
                out[f"transformer.layers.{i}.0.cell.1.qkv.{part}"] = np.concatenate([state[n] for n in names])
            else:
                unmapped += [n for n in names if n in state]
    return out, unmapped


_JAX_BLOCK = re.compile(r"Transformer/encoderblock_(\d+)/(.+)")


def from_jax(state):
    """google-research/vision_transformer npz -> ms_vit names; Flax kernels are (in, out) and are
    transposed to MindSpore's (out, in); attention kernels are (D, H, d) / (H, d, D)."""
    out, unmapped = {}, []
    blocks = {}
    for name, value in state.items():
        name = name[len("opt/target/"):] if name.startswith("opt/target/") else name
        if name == "cls":
            out["cls"] = value
        elif name == "Transformer/posembed_input/pos_embedding":
            out["pos_embedding"] = value
        elif name == "embedding/kernel":                      # (P, P, C, D) -> (D, C, P, P)
            out["patch_embedding.conv.weight"] = value.transpose(3, 2, 0, 1)
        elif name == "embedding/bias":
            out["patch_embedding.conv.bias"] = value
        elif name in ("Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias"):
            out["norm." + ("gamma" if name.endswith("scale") else "beta")] = value
        elif name == "head/kernel":
            out["dense.weight"] = value.T
        elif name == "head/bias":
            out["dense.bias"] = value
        elif _JAX_BLOCK.fullmatch(name):
            index, rest = _JAX_BLOCK.fullmatch(name).groups()
            blocks.setdefault(int(index), {})[rest] = value
        else:
            unmapped.append(name)
    for i, block in sorted(blocks.items()):
        prefix = f"transformer.layers.{i}"
        attn = "MultiHeadDotProductAttention_1"
        simple = {
            "LayerNorm_0/scale": f"{prefix}.0.cell.0.gamma", "LayerNorm_0/bias": f"{prefix}.0.cell.0.beta",
            "LayerNorm_2/scale": f"{prefix}.1.cell.0.gamma", "LayerNorm_2/bias": f"{prefix}.1.cell.0.beta",
            "MlpBlock_3/Dense_0/bias": f"{prefix}.1.cell.1.dense1.bias",
            "MlpBlock_3/Dense_1/bias": f"{prefix}.1.cell.1.dense2.bias",
            f"{attn}/out/bias": f"{prefix}.0.cell.1.out.bias",
        }
        kernels = {"MlpBlock_3/Dense_0/kernel": f"{prefix}.1.cell.1.dense1.weight",
                   "MlpBlock_3/Dense_1/kernel": f"{prefix}.1.cell.1.dense2.weight"}
        qkv = [f"{attn}/{part}/{kind}" for part in ("query", "key", "value") for kind in ("kernel", "bias")]
        for key, value in block.items():
            if key in simple:
                out[simple[key]] = value
            elif key in kernels:
                out[kernels[key]] = value.T
            elif key == f"{attn}/out/kernel":                  # (H, d, D) -> (D, H*d)
                out[f"{prefix}.0.cell.1.out.weight"] = value.reshape(-1, value.shape[-1]).T
            elif key not in qkv:
                unmapped.append(f"Transformer/encoderblock_{i}/{key}")
        if all(k in block for k in qkv):                          # (D, H, d) x3 -> (3D, D); (H, d) x3 -> (3D,)
            out[f"{prefix}.0.cell.1.qkv.weight"] = np.concatenate(
                [block[f"{attn}/{p}/kernel"].reshape(block[f"{attn}/{p}/kernel"].shape[0], -1).T
                 for p in ("query", "key", "value")])
            out[f"{prefix}.0.cell.1.qkv.bias"] = np.concatenate(
                [block[f"{attn}/{p}/bias"].reshape(-1) for p in ("query", "key", "value")])
    return out, unmapped


def _identity(state):
    return dict(state), []


@dataclasses.dataclass(frozen=True)
class Layout:
    """One way of naming a ViT's weights, and what the networks that write it compute with."""
    name: str
    writers: str                 # who writes files in this layout
    marker: str                  # a regular expression that some key of such a file, and of no other layout, matches
    convert: Callable            # state -> (ms_vit params, unmapped names)
    numerics: Optional[str]      # NUMERICS key; None: recorded in the file (ms_vit)
    preprocess: Optional[str]    # PREPROCESS key; None: recorded in the file, or by weight set (timm)


# In the order they are tried: the first whose marker some key matches.
LAYOUTS = [
    Layout("ms_vit", "ms_vit (train.py, ms_vit.weights.convert): a checkpoint with ms_vit's metadata", r"ms_vit_meta",
           _identity, None, None),
    Layout("model_zoo", "the MindSpore model zoo (official/cv/VIT)", r"stem\.patch_to_embedding\.dense\.weight",
           from_model_zoo, "mindspore", "mindspore"),
    Layout("mindvision", "MindSpore Vision (mindvision)", r"head\.dense\.weight", from_table(MINDVISION_NAMES),
           "mindspore", "mindspore"),
    Layout("mindcv_v0_2", "mindcv before 0.3.0", r"head\.classifier\.weight", from_table(MINDCV_V0_2_NAMES),
           "mindspore", "imagenet"),
    Layout("mindcv", "mindcv 0.3.0 and later", r"blocks\.0\.norm1\.gamma", from_table(TIMM_NAMES),
           "mindspore", "imagenet"),
    Layout("timm", "timm and DeiT (model.safetensors, .pth, .bin)", r"blocks\.0\.norm1\.weight",
           from_table(TIMM_NAMES), "torch", None),
    Layout("torchvision", "torchvision (.pth)", r"class_token", from_table(TORCHVISION_NAMES), "torch",
           "torchvision"),
    Layout("jax", "the JAX release, google-research/vision_transformer (.npz)", r"(opt/target/)?Transformer/.*",
           from_jax, "flax", "jax"),
    Layout("mindspore_tutorial", "the MindSpore ViT tutorial (vit_b_16_224.ckpt)",
           r"transformer\.layers\.0\.0\.cell\.0\.gamma", _identity, "mindspore", "mindspore"),
]
LAYOUT_NAMES = [layout.name for layout in LAYOUTS]


def layout_named(name: str) -> Layout:
    found = next((layout for layout in LAYOUTS if layout.name == name), None)
    if found is None:
        raise ConversionError(f"unknown layout {name!r}: choose one of {', '.join(LAYOUT_NAMES)}")
    return found


def detect_layout(keys, source: str = "weights") -> Layout:
    """The layout whose marker a key matches (``LAYOUTS`` order)."""
    for layout in LAYOUTS:
        if any(re.fullmatch(layout.marker, key) for key in keys):
            return layout
    shown = ", ".join(sorted(keys)[:6]) or "nothing"
    raise ConversionError(f"{source}: not a ViT checkpoint in a layout ms_vit knows ({', '.join(LAYOUT_NAMES)}); "
                          f"its names begin {shown}")


def load_source(path: str) -> Tuple[Dict[str, np.ndarray], dict]:
    """``(tensors, ms_vit metadata or {})`` of a ``.ckpt`` (MindSpore), ``.safetensors``, ``.npz`` or ``.pth``/``.bin``
    (PyTorch; needs torch) file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    meta = {}
    try:
        if ext == ".ckpt":
            tensors, meta = checkpoint.read(path)
        elif ext == ".safetensors":
            from safetensors.numpy import load_file
            tensors = load_file(path)
        elif ext == ".npz":
            _check_zip(path)
            with np.load(path) as npz:
                tensors = {k: npz[k] for k in npz.files}
        elif ext in (".pth", ".pt", ".bin"):
            _check_zip(path)
            tensors = _load_torch(path)
        else:
            raise ConversionError(f"{path}: unknown format {ext or '(none)'}; expected .ckpt, .safetensors, .npz, "
                                  ".pth or .bin")
    except (ConversionError, CheckpointError):
        raise
    except Exception as exc:
        raise ConversionError(f"cannot read {path}: the file is truncated or corrupted, or not what its name says "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return tensors, meta


# numpy (.npz) and torch (.pth: a zip since PyTorch 1.6) allocate and inflate what a zip's members declare; weights
# barely compress (float32: ~1.1x), so members declaring more than 16x the file (beyond 64 MB) are a decompression
# bomb (deflate reaches ~1000x), refused before anything is inflated
_MAX_EXPANSION, _SMALL_ZIP = 16, 64 << 20


def _check_zip(path):
    if not zipfile.is_zipfile(path):
        return                                                    # (an old non-zip .pth: torch reads it as it is)
    with zipfile.ZipFile(path) as archive:
        declared = sum(info.file_size for info in archive.infolist())
    size = os.path.getsize(path)
    if declared > max(_MAX_EXPANSION * size, _SMALL_ZIP):
        raise ConversionError(f"cannot read {path}: its members declare {declared:,} bytes, {declared // size:,} "
                              f"times the file's {size:,}: a decompression bomb, not weights")


def _load_torch(path):
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path} is a PyTorch file and torch is not installed (pip install torch); or use the "
                              "model.safetensors file of the same weights") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}


@dataclasses.dataclass
class Pretrained:
    """Weights read into ms_vit's names, and what to build them into."""
    params: Dict[str, np.ndarray]
    layout: Layout
    config: dict                 # ViTConfig fields the weights need (numerics, preprocessing), or the saved config
    meta: dict                   # ms_vit metadata of ms_vit checkpoints, else {}


def read_pretrained(path: str, layout: Optional[str] = None, ema: bool = False,
                    preprocess: Optional[str] = None) -> Pretrained:
    """Read weights in any layout of ``LAYOUTS`` (detected, or named by ``layout``) into ms_vit's names.

    ``ema``: the exponential moving average copies (``ema.*``) instead of the trained weights. ``preprocess``: a
    ``PREPROCESS`` key, for layouts whose preprocessing depends on the weight set (timm); default for those: mean/std
    0.5 when the file name says ``augreg``, else ImageNet's."""
    tensors, meta = load_source(path)
    found = layout_named(layout or "ms_vit") if layout or meta else detect_layout(tensors, path)
    if ema:
        averages = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
        if not averages:
            raise CheckpointError(f"{path} holds no EMA weights (train with --ema_decay to keep them)")
        tensors = averages
    else:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("ema.")}
    weights = {k: v for k, v in tensors.items() if not _STATE.match(k)}
    set_aside = len(tensors) - len(weights)
    params, unmapped = found.convert({k: np.asarray(v) for k, v in weights.items()})
    if unmapped:
        shown = ", ".join(sorted(unmapped)[:10]) + (f" and {len(unmapped) - 10} more" if len(unmapped) > 10 else "")
        raise ConversionError(f"{path} ({found.writers}): {len(unmapped)} weight(s) have no place in ms_vit's ViT: "
                              f"{shown}")
    if set_aside:
        logger.info(f"{path}: {set_aside} entries that are not model weights (optimizer and training state) "
                    "set aside")
    params = {k: (v.astype(np.float32) if v.dtype != np.float32 else v) for k, v in params.items()}
    if found.numerics is None:                                   # an ms_vit checkpoint says it all
        return Pretrained(params, found, dict(meta.get("config", {})), meta)
    key = preprocess or found.preprocess or ("inception" if "augreg" in os.path.basename(path).lower()
                                             else "imagenet")
    if key not in PREPROCESS:
        raise ConversionError(f"unknown preprocessing {key!r}: use one of {', '.join(PREPROCESS)}")
    return Pretrained(params, found, dict(NUMERICS[found.numerics], **PREPROCESS[key]), meta)


def convert(src: str, out: str, model: str = None, preprocess: str = "auto", num_heads: int = None,
            layout: Optional[str] = None):
    """Convert ``src`` (any layout of ``LAYOUTS``) into the ms_vit checkpoint ``out``; returns its ``ViTConfig``."""
    pretrained = read_pretrained(src, layout, preprocess=None if preprocess == "auto" else preprocess)
    try:
        found = checkpoint.config_from_shapes({k: v.shape for k, v in pretrained.params.items()})
    except CheckpointError as exc:
        raise ConversionError(f"{src}: {exc}") from None
    fields = {k: v for k, v in pretrained.config.items() if k in _WEIGHT_FIELDS}
    if model:
        config = variant_config(model, num_classes=found.num_classes, distilled=found.distilled,
                                no_embed_class=found.no_embed_class, layer_scale_init=found.layer_scale_init,
                                **fields)
    else:
        config = dataclasses.replace(found, **fields)
    if num_heads:
        config = dataclasses.replace(config, num_heads=num_heads)
    net = ViT(config, fused_kernels=False)
    try:
        checkpoint.load_into(net, pretrained.params, source=src)
    except CheckpointError as exc:
        raise ConversionError(str(exc)) from None
    checkpoint.save(net, out, meta={"source": os.path.basename(src), "layout": pretrained.layout.name})
    return config


_WEIGHT_FIELDS = ("gelu_approximate", "layer_norm_eps", "mean", "std", "crop_pct", "interpolation")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ms_vit.weights.convert",
        description="Convert pretrained ViT weights in any public layout into an ms_vit checkpoint that records its "
                    "variant, numerics and preprocessing. Layouts: " +
                    "; ".join(f"{layout.name}: {layout.writers}" for layout in LAYOUTS))
    parser.add_argument("src", help="the weights: .ckpt, .safetensors, .npz, .pth or .bin")
    parser.add_argument("--out", required=True, help="the .ckpt to write")
    parser.add_argument("--layout", choices=LAYOUT_NAMES, help="the source's layout (default: detected from its names)")
    parser.add_argument("--model", help="variant name (e.g. vit_b_16_224); default: read from the tensor shapes")
    parser.add_argument("--num_heads", type=int, help="attention heads, only for architectures outside the variant "
                        "table (shapes do not show them; default: dim / 64)")
    parser.add_argument("--preprocess", default="auto", choices=["auto"] + list(PREPROCESS),
                        help="input normalisation the weights expect; auto: the layout's (timm: inception = mean/std "
                        "0.5, crop 0.9 for file names containing 'augreg', else imagenet) (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.out.endswith(".ckpt"):
        parser.error("--out must end with .ckpt")
    try:
        config = convert(args.src, args.out, args.model, args.preprocess, args.num_heads, args.layout)
    except (ConversionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {checkpoint.describe(config)}, image {config.image_size}, GELU "
          f"{'tanh' if config.gelu_approximate else 'exact'}, LayerNorm eps {config.layer_norm_eps:g}, "
          f"mean {config.mean}, std {config.std}, crop_pct {config.crop_pct}, {config.interpolation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
