"""``create_model``: the one way train.py, eval.py and infer.py build (and load) a ViT."""
import contextlib
import dataclasses
from typing import Optional

from .models.vit import ViT, ViTConfig, variant_config
from .weights import checkpoint


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
# Architecture that a variant name does not say and weights do: DeiT's distillation token, LayerScale, position
# embedding without the class slot.
_TOKEN_FIELDS = ("distilled", "layer_scale_init", "no_embed_class")


def create_model(name: Optional[str] = None, num_classes: Optional[int] = None, image_size: Optional[int] = None,
                 checkpoint_path: Optional[str] = None, fused_kernels: Optional[bool] = None,
                 device_kernels: bool = False, ema: bool = False, pretrained: bool = False, **overrides) -> ViT:
    """Build a ViT variant and optionally load pretrained weights into it.

    Args:
        name: a variant such as ``vit_b_16_224`` (see ``list_models()``), or the name of a pretrained weight set
            (``vit_b_16_224.mindvision``, ``vit_base_patch16_224.augreg2_in21k_ft_in1k``; ``python -m
            ms_vit.weights`` lists them), which is downloaded, verified and cached on first use. May be left out
            with ``checkpoint_path``: the variant is then the file's (recorded, or read from its shapes).
        num_classes: classes of the head; default: the weights', else 1000. A different count than the weights'
            leaves the head newly initialised (fine-tuning), announced.
        image_size: input side; default: the weights', else the variant's. A different size than the weights'
            resamples the position embedding, announced.
        checkpoint_path: a weights file in any layout ``ms_vit.weights.convert`` knows (ms_vit and MindSpore
            checkpoints,
            MindSpore Vision, mindcv, the model zoo, timm, the JAX release, torchvision); every parameter must fit
            (``checkpoint.load_into``). The numerics and preprocessing the weights were trained with come along.
        fused_kernels: run on the fused CPU kernels (faster, same numbers); default: on CPU when they can be built
            here; ``False``: MindSpore's operators only (what exports need). See ``ms_vit.models.layers``.
        device_kernels: Ascend's fused operators (FlashAttention, one-operator GELU); opt-in, refused elsewhere.
        ema: load the exponential moving average of the weights (``ema.*``, written by train.py with
            ``--ema_decay``) instead of the trained weights.
        pretrained: load the weight set ``name`` names; a bare variant (``vit_b_16_224``) takes its first one.
        **overrides: any other ``ViTConfig`` field (``patch_size``, ``depth``, ``drop_path_rate``,
            ``gelu_approximate``, ...).

    Returns:
        The ``ViT``; ``net.checkpoint_meta`` holds what the checkpoint recorded (class names, epoch...).
    """
    from .weights import convert, registry  # (here: both also run as python -m ms_vit.weights[.convert])
    weight_set = None
    if pretrained or registry.is_weight_name(name):
        if checkpoint_path:
            raise ValueError("give a pretrained weight set's name or a checkpoint_path, not both")
        weight_set = registry.find(name)
        checkpoint_path, name = registry.fetch(weight_set), None      # the variant is the file's, checked
    if not checkpoint_path:
        return build_model(name, {}, {}, None, num_classes, image_size, fused_kernels, device_kernels, **overrides)
    loaded = convert.read_pretrained(checkpoint_path, weight_set.layout if weight_set and
                                     weight_set.layout != "auto" else None, ema=ema)
    fields = (weight_set.config_fields(loaded) if weight_set else
              loaded.config if loaded.layout.numerics else None)
    meta = dict(loaded.meta, weights=weight_set.name) if weight_set else loaded.meta
    return build_model(name, loaded.params, meta, checkpoint_path, num_classes, image_size, fused_kernels,
                       device_kernels, weight_fields=fields, **overrides)


def build_model(name: Optional[str], params: dict, meta: dict, source: Optional[str] = None,
                num_classes: Optional[int] = None, image_size: Optional[int] = None,
                fused_kernels: Optional[bool] = None, device_kernels: bool = False,
                weight_fields: Optional[dict] = None, **overrides) -> ViT:
    """``create_model`` for weights already read into ms_vit's names (``params`` may be empty): for callers that
    need the file's other entries too, such as train.py's optimizer state. ``weight_fields``: the numerics and
    preprocessing the weights need, for files that do not record their config."""
    saved = ViTConfig.from_dict(meta["config"]) if "config" in meta else None
    needs = (weight_fields if weight_fields is not None else
             {k: getattr(saved, k) for k in _WEIGHT_FIELDS} if saved else {})
    needs = {k: v for k, v in needs.items() if k in _WEIGHT_FIELDS}
    if name:
        config = variant_config(name)
        if params and not saved:        # DeiT's tokens and LayerScale: as the weights have them
            held = checkpoint.config_from_shapes({k: v.shape for k, v in params.items()})
            config = dataclasses.replace(config, **{k: getattr(held, k) for k in _TOKEN_FIELDS})
        elif saved:
            config = dataclasses.replace(config, **{k: getattr(saved, k) for k in _TOKEN_FIELDS})
        config = dataclasses.replace(config, **needs)
    elif saved:
        config = saved
    elif params:
        config = dataclasses.replace(checkpoint.config_from_shapes({k: v.shape for k, v in params.items()}),
                                     **needs)
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
