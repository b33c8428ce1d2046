"""Convert pretrained ViT weights from timm and from the original JAX release into ms_vit checkpoints.

    python -m ms_vit.convert SRC --out CKPT [--model NAME] [--preprocess auto|inception|imagenet]

SRC is one of
  * a timm ViT state dict: ``model.safetensors`` (read with safetensors' numpy API, no torch needed) or
    ``pytorch_model.bin`` / ``*.pth`` (needs torch; loaded with ``weights_only=True``);
  * a google-research/vision_transformer ``.npz`` (keys such as
    ``Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel``).

The checkpoint written records the variant, the class count, the numerics these weights were trained with
(exact erf GELU, LayerNorm eps 1e-6) and their preprocessing, so ``create_model(checkpoint_path=CKPT)``,
train.py, eval.py and infer.py need no further flags.
"""
import argparse
import dataclasses
import os
import re
import sys
from typing import Dict

import numpy as np

from . import checkpoint
from .checkpoint import CheckpointError
from .vit import INCEPTION_MEAN, INCEPTION_STD, IMAGENET_MEAN, IMAGENET_STD, ViT, variant_config

# Numerics of every public timm / JAX ViT weight set.
SOURCE_NUMERICS = dict(gelu_approximate=False, layer_norm_eps=1e-6)
PREPROCESS = {
    "inception": dict(mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=0.9),   # augreg and JAX release
    "imagenet": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875),   # e.g. DeiT-style weights
}

# timm name -> ms_vit name (regular expressions over the whole name; \1 is the block index).
TIMM_NAMES = [
    (r"cls_token", "cls"),
    (r"pos_embed", "pos_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embedding.conv.\1"),
    (r"blocks\.(\d+)\.norm1\.weight", r"transformer.layers.\1.0.cell.0.gamma"),
    (r"blocks\.(\d+)\.norm1\.bias", r"transformer.layers.\1.0.cell.0.beta"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"transformer.layers.\1.0.cell.1.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"transformer.layers.\1.0.cell.1.out.\2"),
    (r"blocks\.(\d+)\.norm2\.weight", r"transformer.layers.\1.1.cell.0.gamma"),
    (r"blocks\.(\d+)\.norm2\.bias", r"transformer.layers.\1.1.cell.0.beta"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"transformer.layers.\1.1.cell.1.dense1.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"transformer.layers.\1.1.cell.1.dense2.\2"),
    (r"norm\.weight", "norm.gamma"),
    (r"norm\.bias", "norm.beta"),
    (r"head\.(weight|bias)", r"dense.\1"),
]

_JAX_BLOCK = re.compile(r"Transformer/encoderblock_(\d+)/(.+)")


class ConversionError(ValueError):
    """Weights that cannot be converted; the message lists what does not map or fit."""


def load_source(path: str) -> Dict[str, np.ndarray]:
    """Read a ``.safetensors``, ``.pth``/``.bin`` or ``.npz`` file into a name -> float32 array dict."""
    if not os.path.isfile(path):
        raise ConversionError(f"no such file: {path}")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".safetensors":
            from safetensors.numpy import load_file
            tensors = load_file(path)
        elif ext == ".npz":
            with np.load(path) as npz:
                tensors = {k: npz[k] for k in npz.files}
        elif ext in (".pth", ".pt", ".bin"):
            tensors = _load_torch(path)
        else:
            raise ConversionError(f"{path}: unknown format {ext or '(none)'}; expected .safetensors, .npz, .pth or .bin")
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    return {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}


def _load_torch(path):
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path} is a PyTorch file and torch is not installed; "
                              f"use the model.safetensors file of the same weights instead") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def from_timm(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """timm's ``VisionTransformer`` state dict -> ms_vit names (same tensor layouts)."""
    out, unmapped = {}, []
    for name, value in state.items():
        for pattern, target in TIMM_NAMES:
            if re.fullmatch(pattern, name):
                out[re.sub(pattern, target, name)] = value
                break
        else:
            unmapped.append(name)
    _fail_on_unmapped(unmapped, "timm")
    return out


def from_jax(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """google-research/vision_transformer npz -> ms_vit names; Flax kernels are (in, out) and are
    transposed to MindSpore's (out, in); attention kernels are (D, H, d) / (H, d, D)."""
    out, unmapped = {}, []
    blocks = {}
    for name, value in state.items():
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
    _fail_on_unmapped(unmapped, "JAX")
    return out


def _fail_on_unmapped(unmapped, source):
    if unmapped:
        shown = ", ".join(sorted(unmapped)[:10]) + (f" and {len(unmapped) - 10} more" if len(unmapped) > 10 else "")
        raise ConversionError(f"{len(unmapped)} {source} weight(s) have no place in ms_vit's ViT: {shown}")


def convert(src: str, out: str, model: str = None, preprocess: str = "auto", num_heads: int = None):
    """Convert ``src`` (timm or JAX weights) into the ms_vit checkpoint ``out``; returns its ``ViTConfig``."""
    state = load_source(src)
    params = from_jax(state) if src.lower().endswith(".npz") else from_timm(state)
    if preprocess == "auto":
        is_inception = src.lower().endswith(".npz") or "augreg" in src.lower()
        preprocess = "inception" if is_inception else "imagenet"
    if preprocess not in PREPROCESS:
        raise ConversionError(f"unknown preprocessing {preprocess!r}: use auto, inception or imagenet")
    try:
        found = checkpoint.config_from_shapes({k: v.shape for k, v in params.items()})
    except CheckpointError as exc:
        raise ConversionError(f"{src}: {exc}") from None
    known = dict(SOURCE_NUMERICS, **PREPROCESS[preprocess])
    if model:
        config = variant_config(model, num_classes=found.num_classes, **known)
    else:
        config = dataclasses.replace(found, **known)
    if num_heads:
        config = dataclasses.replace(config, num_heads=num_heads)
    net = ViT(config)
    try:
        checkpoint.load_into(net, params, source=src)
    except CheckpointError as exc:
        raise ConversionError(str(exc)) from None
    checkpoint.save(net, out, meta={"source": os.path.basename(src), "preprocess": preprocess})
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ms_vit.convert", description="Convert timm (.safetensors/.pth/.bin) or JAX (.npz) ViT "
        "weights into an ms_vit checkpoint that records its variant, numerics and preprocessing.")
    parser.add_argument("src", help="timm model.safetensors / pytorch_model.bin, or a JAX .npz")
    parser.add_argument("--out", required=True, help="the .ckpt to write")
    parser.add_argument("--model", help="variant name (e.g. vit_b_16_224); default: read from the tensor shapes")
    parser.add_argument("--num_heads", type=int, help="attention heads, only for architectures outside the variant "
                        "table (shapes do not show them; default: dim / 64)")
    parser.add_argument("--preprocess", default="auto", choices=["auto", "inception", "imagenet"],
                        help="input normalisation the weights expect: inception = mean/std 0.5, crop 0.9 (augreg and "
                        "JAX weights); imagenet = ImageNet mean/std, crop 0.875; auto: inception for .npz files and "
                        "file names containing 'augreg', else imagenet (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.out.endswith(".ckpt"):
        parser.error("--out must end with .ckpt")
    try:
        config = convert(args.src, args.out, args.model, args.preprocess, args.num_heads)
    except (ConversionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {checkpoint.describe(config)}, image {config.image_size}, "
          f"mean {config.mean}, std {config.std}, crop_pct {config.crop_pct}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
