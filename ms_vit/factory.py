"""``create_model``: the one way train.py, eval.py and infer.py build (and load) a ViT."""
import contextlib
import dataclasses
from typing import Optional

from . import checkpoint
from .vit import ViT, ViTConfig, variant_config


def _no_init_parameters():
    """MindSpore's deferred parameter initialisation (``mindspore.nn.utils.no_init_parameters``; marked for
    removal in later versions: then the layers initialise as usual, which costs B/16 about 1 s)."""
    try:
        from mindspore.nn.utils import no_init_parameters
    except ImportError:
        return contextlib.nullcontext()
    return no_init_parameters()

# Overrides for a model that only evaluates: dropout and stochastic depth do nothing there, and a model built
# without them has no random ops, so MindSpore compiles one transformer block for all (``vit.ReusedBlock``:
# faster to compile, less memory). eval.py and infer.py build with them.
INFERENCE = dict(drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0)

# Fields that describe how weights were trained rather than the architecture: a checkpoint's values win
# over a variant's defaults, since the weights need them.
_WEIGHT_FIELDS = ("gelu_approximate", "layer_norm_eps", "mean", "std", "crop_pct", "interpolation", "global_pool")


def create_model(name: Optional[str] = None, num_classes: Optional[int] = None, image_size: Optional[int] = None,
                 checkpoint_path: Optional[str] = None, fused_kernels: Optional[bool] = None,
                 device_kernels: bool = False, ema: bool = False, **overrides) -> ViT:
    """Build a ViT variant and optionally load a checkpoint into it.

    Args:
        name: a variant such as ``vit_b_16_224`` (see ``list_models()``). May be left out when
            ``checkpoint_path`` is an ms_vit checkpoint (it records its config) or any checkpoint in
            ms_vit's layout (the variant is read from its shapes).
        num_classes: classes of the head; default: the checkpoint's, else 1000. A different count than
            the checkpoint's leaves the head newly initialised (fine-tuning), announced.
        image_size: input side; default: the checkpoint's, else the variant's. A different size than
            the checkpoint's resamples the position embedding, announced.
        checkpoint_path: a ``.ckpt`` to load; every parameter must fit (see ``checkpoint.load_into``).
        fused_kernels: run on the fused CPU kernels (faster, same numbers); default: on CPU when they can be built
            here; ``False``: MindSpore's operators only (what exports need). See ``ms_vit.layers``.
        device_kernels: Ascend's fused operators (FlashAttention, one-operator GELU); opt-in, refused elsewhere.
        ema: load the checkpoint's exponential moving average of the weights (``ema.*``, written by train.py
            with ``--ema_decay``) instead of the trained weights.
        **overrides: any other ``ViTConfig`` field (``patch_size``, ``depth``, ``drop_path_rate``,
            ``gelu_approximate``, ...).

    Returns:
        The ``ViT``; ``net.checkpoint_meta`` holds what the checkpoint recorded (class names, epoch...).
    """
    params, meta = checkpoint.read(checkpoint_path) if checkpoint_path else ({}, {})
    if ema:
        params = checkpoint.ema_params(params, checkpoint_path)
    return build_model(name, params, meta, checkpoint_path, num_classes, image_size, fused_kernels, device_kernels,
                       **overrides)


def build_model(name: Optional[str], params: dict, meta: dict, source: Optional[str] = None,
                num_classes: Optional[int] = None, image_size: Optional[int] = None,
                fused_kernels: Optional[bool] = None, device_kernels: bool = False, **overrides) -> ViT:
    """``create_model`` for a checkpoint already read with ``checkpoint.read`` (``params`` may be empty):
    for callers that need the file's other entries too, such as train.py's optimizer state."""
    saved = ViTConfig.from_dict(meta["config"]) if "config" in meta else None
    if name:
        config = variant_config(name)
        if saved:
            config = dataclasses.replace(config, **{k: getattr(saved, k) for k in _WEIGHT_FIELDS})
    elif saved:
        config = saved
    elif params:
        config = checkpoint.config_from_shapes({k: v.shape for k, v in params.items()})
    else:
        raise ValueError("create_model needs a model name or a checkpoint_path")
    if num_classes is None:
        num_classes = params["dense.weight"].shape[0] if "dense.weight" in params else config.num_classes
    fields = dict(overrides, num_classes=num_classes, image_size=image_size)
    config = dataclasses.replace(config, **{k: v for k, v in fields.items() if v is not None})
    # a checkpoint that fills every weight (the head included): no random initialisation to overwrite
    fills_all = "dense.weight" in params and params["dense.weight"].shape[0] == config.num_classes
    with _no_init_parameters() if fills_all else contextlib.nullcontext():
        net = ViT(config, fused_kernels, device_kernels, init_weights=not fills_all)
    if params:
        checkpoint.load_into(net, params, source=source or "checkpoint")
    net.checkpoint_meta = meta
    return net
