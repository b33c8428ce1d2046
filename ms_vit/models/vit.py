"""Vision Transformer (ViT) in MindSpore.

"An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
Dosovitskiy et al., 2020 (https://arxiv.org/abs/2010.11929).

One file holds the network, its variants (as data: ``VARIANTS``) and ``create_model``.
Parameter names follow the MindSpore ViT tutorial, so the public ``vit_b_16_224.ckpt``
loads without renaming::

    cls                                          (1, 1, D)
    pos_embedding                                (1, 1 + N, D)     N = (S / P) ** 2
    patch_embedding.conv.{weight,bias}           (D, 3, P, P), (D,)
    transformer.layers.{i}.0.cell.0.{gamma,beta} LayerNorm before attention
    transformer.layers.{i}.0.cell.1.qkv.*        (3D, D)
    transformer.layers.{i}.0.cell.1.out.*        (D, D)
    transformer.layers.{i}.1.cell.0.{gamma,beta} LayerNorm before the feed-forward
    transformer.layers.{i}.1.cell.1.dense1.*     (M, D)
    transformer.layers.{i}.1.cell.1.dense2.*     (D, M)
    norm.{gamma,beta}                            final LayerNorm
    dense.{weight,bias}                          classifier head (num_classes, D)

DeiT's models add (``ViTConfig.distilled``, ``layer_scale_init``, ``no_embed_class``; timm's ``deit.py``)::

    dist_token                                   (1, 1, D)         distilled: the distillation token
    dense_dist.{weight,bias}                     (K, D)            distilled: its head; the two heads averaged
    transformer.layers.{i}.{0,1}.cell.2.gamma    (D,)              DeiT III: LayerScale of each residual branch
    pos_embedding                                (1, N, D)         DeiT III: no slot for the class token

Shapes in comments: B batch, C channels, S image side, P patch side, N patches,
D embedding dim, H heads, d = D / H head dim, M feed-forward (MLP) dim, K classes.
"""
import dataclasses
import math
from typing import Optional, Tuple

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, TruncatedNormal, Uniform, XavierUniform, Zero, initializer

from . import kernels as ms_kernels
from .layers import (
    CPU_FUSED,
    DEVICE,
    GELU,
    OPS,
    BatchMatMul,
    Dense,
    FlashAttention,
    LayerNorm,
    Linear,
    MergeHeads,
    Patchify,
    Softmax,
    SplitHeads,
    choose_kernels,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass
class ViTConfig:
    """Everything needed to rebuild a ViT and to feed it: architecture, numerics, preprocessing.

    It travels inside every checkpoint ms_vit writes (see ``ms_vit.weights.checkpoint``).
    """
    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    in_channels: int = 3
    global_pool: str = "token"        # "token": class token; "mean": mean of the patch tokens
    # Numerics. Defaults are those of the ViT paper's JAX code as timm runs it: exact (erf) GELU and
    # LayerNorm eps 1e-6; every public ImageNet ViT weight set (JAX, timm) was trained with them.
    # The MindSpore tutorial's network used MindSpore's nn defaults (tanh GELU, eps 1e-7); its public
    # checkpoint scores the same with either (the difference is ~1e-3 in the logits).
    gelu_approximate: bool = False
    layer_norm_eps: float = 1e-6
    # DeiT's models (timm's deit.py): a distillation token and head, averaged with the class token's (DeiT);
    # LayerScale on each residual branch, initialised to this value, and a position embedding without the class
    # token's slot, added before the class token is prepended (DeiT III).
    distilled: bool = False
    layer_scale_init: Optional[float] = None
    no_embed_class: bool = False
    # Regularisation (training only).
    drop_rate: float = 0.0            # dropout after the position embedding, in the MLP and the projection
    attn_drop_rate: float = 0.0       # dropout on the attention weights
    drop_path_rate: float = 0.0       # stochastic depth, linearly increasing to this value at the last block
    # Initialisation of a model trained from scratch: "timm" (timm's default, as DeiT trained: truncated-normal(0.02)
    # Dense and head) or "jax" (the ViT paper's: Xavier-uniform Dense, zero head). See ViT.init_weights. Default
    # by measurement: benchmarks/bench_recipe.py, timm 89.1 %, ms_vit "timm" 89.6 %, "jax" 87.8 %.
    weight_init: str = "timm"
    # Preprocessing the weights expect.
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def __post_init__(self):
        for name in _SIZES:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        for name, (low, high) in _RATES.items():
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                      or not low <= value < high):
                raise ValueError(f"{name} must be a number in [{low}, {high}), not {value!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 3 or \
                    not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{name} must be 3 numbers (red, green, blue), not {value!r}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.interpolation not in ("bicubic", "bilinear", "nearest", "area"):
            raise ValueError(f"interpolation must be bicubic, bilinear, nearest or area, not {self.interpolation!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.global_pool not in ("token", "mean"):
            raise ValueError(f"global_pool must be 'token' or 'mean', not {self.global_pool!r}")
        if self.weight_init not in ("jax", "timm"):
            raise ValueError(f"weight_init must be 'jax' or 'timm', not {self.weight_init!r}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token, and the distillation token of distilled models."""
        return 2 if self.distilled else 1

    @property
    def num_pos_embeddings(self) -> int:
        return self.num_patches + (0 if self.no_embed_class else self.num_prefix_tokens)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ViTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# What ViTConfig checks: the sizes are positive integers; the rates and numerics lie in [low, high) (None: unset)
_SIZES = ("image_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_dim", "num_classes", "in_channels")
_RATES = {"drop_rate": (0.0, 1.0), "attn_drop_rate": (0.0, 1.0), "drop_path_rate": (0.0, 1.0),
          "layer_norm_eps": (1e-12, 1.0), "crop_pct": (0.01, 1.0 + 1e-9), "layer_scale_init": (0.0, 1e3)}


# The variants of the ViT paper (Table 1) plus DeiT's Ti and S: width D, depth, heads H, MLP dim M.
ARCHS = {
    "ti": dict(embed_dim=192, depth=12, num_heads=3, mlp_dim=768),
    "s": dict(embed_dim=384, depth=12, num_heads=6, mlp_dim=1536),
    "b": dict(embed_dim=768, depth=12, num_heads=12, mlp_dim=3072),
    "l": dict(embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096),
    "h": dict(embed_dim=1280, depth=32, num_heads=16, mlp_dim=5120),
}
PATCHES = {"ti": (16,), "s": (16,), "b": (16, 32), "l": (16, 32), "h": (14,)}
VARIANTS = {
    f"vit_{arch}_{patch}_{size}": dict(ARCHS[arch], patch_size=patch, image_size=size,
                                       crop_pct=0.875 if size == 224 else 1.0)
    for arch, patches in PATCHES.items() for patch in patches for size in (224, 384)
}


def list_models():
    """Names accepted by ``create_model``."""
    return sorted(VARIANTS)


class Attention(nn.Cell):
    """Multi-head self-attention.

    Args:
        dim: embedding dim D.
        num_heads: number of heads H; head dim d = D / H, scores scaled by d ** -0.5.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        kernels: what the layers run on (``ms_vit.models.layers``): MindSpore's operators, the fused CPU kernels, or the
            device's (FlashAttention on Ascend, for float16/bfloat16 inputs without attention dropout).

    Inputs: x (B, N, D); residual (B, N, D), only when ``takes_residual``: added to the output. Outputs: (B, N, D).
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 kernels: str = OPS):
        super().__init__()
        fused = kernels == CPU_FUSED
        self.num_heads = num_heads
        self.qkv = Dense(dim, dim * 3, fused)
        self.split_heads = SplitHeads(num_heads, dim // num_heads, fused)
        self.q_kt = BatchMatMul(transpose_b=True)
        self.softmax = Softmax(fused)
        self.attn_drop = nn.Dropout(p=attn_drop)
        self.attn_v = BatchMatMul()              # its gradient uses transposed matmuls, no Transpose ops
        self.merge_heads = MergeHeads(fused)
        self.out = Dense(dim, dim, fused)
        self.out_drop = nn.Dropout(p=proj_drop)
        self.flash = FlashAttention(num_heads) if kernels == DEVICE and attn_drop == 0 else None
        self.fused_core = ms_kernels.attention_op() if fused and attn_drop == 0 else None    # one CPU kernel
        # construct(x, residual) returns residual + attention(x), the addition done by the projection's kernel
        self.takes_residual = self.fused_core is not None and proj_drop == 0

    def attention_weights(self, x):
        """(B, N, D) -> softmax(q k^T / sqrt d), (B, H, N, N) float32, computed in float32 so that float16
        compute (AMP O2) cannot overflow."""
        q, k, _ = self.split_heads(self.qkv(x))                      # (B, H, N, d), q scaled
        return self.softmax(self.q_kt(q, k).astype(ms.float32))

    def construct(self, x, residual=None):
        if self.fused_core is not None:
            b, n, dim = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, dim // self.num_heads)  # (B, N, 3, H, d)
            heads = self.fused_core(qkv.astype(ms.float32))[0]       # (B, N, H, d), heads merged
            merged = heads.astype(qkv.dtype).reshape(b, n, dim)
            if residual is None:
                return self.out_drop(self.out(merged))
            return self.out(merged, residual)                        # residual + projection, one op (no dropout)
        q, k, v = self.split_heads(self.qkv(x))                      # 3 x (B, H, N, d), q scaled
        if self.flash is not None and (q.dtype != ms.float32 or self.flash.low_precision):
            x = self.flash(q, k, v)                                  # (B, H, N, d), one fused kernel
        else:
            attn = self.softmax(self.q_kt(q, k).astype(ms.float32))  # (B, H, N, N), float32
            attn = self.attn_drop(attn.astype(x.dtype))
            x = self.attn_v(attn, v)                                 # (B, H, N, d)
        return self.out_drop(self.out(self.merge_heads(x)))          # (B, N, D)


class FeedForward(nn.Cell):
    """The MLP of a transformer block: Dense, GELU, dropout, Dense, dropout.

    Args:
        dim: embedding dim D.
        hidden_dim: hidden dim M.
        dropout: dropout after the activation and after the second Dense.
        gelu_approximate: tanh-approximated GELU instead of the exact (erf) one.
        kernels: what the layers run on (``ms_vit.models.layers``).

    Inputs: x (B, N, D). Outputs: (B, N, D).
    """

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, gelu_approximate: bool = False,
                 kernels: str = OPS):
        super().__init__()
        fused = kernels == CPU_FUSED
        fused_gelu = fused and not gelu_approximate                  # dense1 and the exact GELU in one CPU kernel
        self.dense1 = Dense(dim, hidden_dim, fused, gelu=fused_gelu)
        self.gelu = None if fused_gelu else GELU(gelu_approximate, fused, one_op=kernels == DEVICE)
        self.drop1 = nn.Dropout(p=dropout)
        self.dense2 = Dense(hidden_dim, dim, fused)
        self.drop2 = nn.Dropout(p=dropout)
        # construct(x, residual) returns residual + feed_forward(x), the addition done by dense2's kernel
        self.takes_residual = fused and dropout == 0

    def construct(self, x, residual=None):
        x = self.dense1(x) if self.gelu is None else self.gelu(self.dense1(x))     # (B, N, M)
        if residual is not None:
            return self.dense2(self.drop1(x), residual)              # (B, N, D), residual added in the same op
        return self.drop2(self.dense2(self.drop1(x)))                # (B, N, D)


class DropPath(nn.Cell):
    """Stochastic depth: in training, zero a sample's residual branch with probability ``drop_prob``
    and scale the kept ones by 1 / (1 - drop_prob). Identity in evaluation.

    The keep mask is drawn in float32 whatever ``x``'s dtype: ``keep_prob + U[0, 1)`` in bfloat16 (8-bit mantissa)
    rounds near 1, so a block with drop probability 0.0091 dropped 0.58 % of its samples. The kept samples' scale
    1 / keep_prob is rounded once to ``x``'s dtype, as timm's (in bfloat16 at most 2^-8 relative: 0.14 % at 0.0091)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.keep_prob = 1.0 - drop_prob

    def construct(self, x):
        if not self.training or self.keep_prob == 1.0:
            return x
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = ops.floor(self.keep_prob + ops.rand(mask_shape, dtype=ms.float32))   # 1 kept, 0 dropped
        return x * (mask / self.keep_prob).astype(x.dtype)


class LayerScale(nn.Cell):
    """``x * gamma``, one learnt factor per channel (DeiT III, CaiT), ``gamma`` initialised to ``init``.

    Inputs: x (B, N, D). Outputs: (B, N, D).
    """

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = Parameter(initializer(float(init), (dim,)), name="gamma")

    def construct(self, x):
        return x * self.gamma.astype(x.dtype)


class ResidualCell(nn.Cell):
    """``x + drop_path(cell(x))``.

    Args:
        cell: the residual branch (here LayerNorm followed by attention or feed-forward, and LayerScale).
        drop_path: stochastic-depth probability of this branch.
    """

    def __init__(self, cell: nn.Cell, drop_path: float = 0.0):
        super().__init__()
        self.cell = cell
        self.drop_path = DropPath(drop_path)
        # LayerNorm then a branch that adds the residual itself (fused kernels): x + branch(norm(x)) in its last op
        self.branch_adds = drop_path == 0 and len(cell) == 2 and getattr(cell[1], "takes_residual", False)

    def construct(self, x):
        if self.branch_adds:
            return self.cell[1](self.cell[0](x), x)
        return x + self.drop_path(self.cell(x))


class Block(nn.SequentialCell):
    """One pre-norm transformer block: ``x + Attention(LayerNorm(x))``, then ``x + FeedForward(LayerNorm(x))``.

    A SequentialCell of the two ResidualCells, so that its parameters are named ``<i>.0.*`` (attention) and
    ``<i>.1.*`` (feed-forward) in the encoder, as in every ms_vit checkpoint.

    Args: as ``TransformerEncoder``'s, with ``drop_path`` this block's stochastic-depth probability.

    Inputs: x (B, N, D). Outputs: (B, N, D).
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, drop_rate: float, attn_drop_rate: float,
                 drop_path: float, layer_norm_eps: float, gelu_approximate: bool, kernels: str,
                 layer_scale_init: Optional[float] = None):
        fused = kernels == CPU_FUSED
        scale = [LayerScale(dim, layer_scale_init)] if layer_scale_init is not None else []
        super().__init__([
            ResidualCell(nn.SequentialCell([
                LayerNorm(dim, layer_norm_eps, fused),
                Attention(dim, num_heads, attn_drop_rate, drop_rate, kernels)] + scale), drop_path),
            ResidualCell(nn.SequentialCell([
                LayerNorm(dim, layer_norm_eps, fused),
                FeedForward(dim, mlp_dim, drop_rate, gelu_approximate, kernels)]
                + ([LayerScale(dim, layer_scale_init)] if scale else [])), drop_path),
        ])


class ReusedBlock(Block):
    """A ``Block`` that MindSpore's front end compiles once for all blocks built with the same arguments, then
    inlines (``ms.lazy_inline(policy="front")``): the same graph, compiled faster and holding less memory
    (ViT-Ti/16 inference: first call 2.3 -> 1.2 s, peak 600 -> 500 MB; ViT-B/16 912 -> 825 MB).

    Only for blocks without random ops (no dropout, no stochastic depth): the copies share the first block's
    random state, so their dropout masks would be the same (measured)."""

    @ms.lazy_inline(policy="front")
    def __init__(self, *args):
        super().__init__(*args)


class TransformerEncoder(nn.Cell):
    """Pre-norm transformer encoder: ``depth`` blocks of
    ``x + Attention(LayerNorm(x))`` then ``x + FeedForward(LayerNorm(x))``.

    Args:
        dim: embedding dim D.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_dim: feed-forward hidden dim M.
        drop_rate: dropout in the feed-forward and after the attention projection.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth of the last block; block i uses ``rate * i / (depth - 1)``.
        layer_norm_eps: LayerNorm epsilon.
        gelu_approximate: tanh GELU instead of exact.
        kernels: what the layers run on (``ms_vit.models.layers``).
        layer_scale_init: LayerScale on each residual branch, initialised to this (DeiT III); None: none.

    Inputs: x (B, N, D). Outputs: (B, N, D).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_dim: int, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, layer_norm_eps: float = 1e-6,
                 gelu_approximate: bool = False, kernels: str = OPS, layer_scale_init: Optional[float] = None):
        super().__init__()
        drop_paths = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        deterministic = drop_rate == 0 and attn_drop_rate == 0 and drop_path_rate == 0
        block = ReusedBlock if deterministic else Block
        self.layers = nn.SequentialCell([
            block(dim, num_heads, mlp_dim, drop_rate, attn_drop_rate, drop_paths[i], layer_norm_eps, gelu_approximate,
                  kernels, layer_scale_init)
            for i in range(depth)
        ])

    def construct(self, x):
        return self.layers(x)


class PatchEmbedding(nn.Cell):
    """Split the image into P x P patches and project each to D: a Conv2d with kernel = stride = P.

    On CPU the same product is computed as (patches) x (conv weight as a matrix): MindSpore's CPU Conv2d
    runs a 16x16 stride-16 kernel at under 1 GFLOP/s, its MatMul near the machine's peak. Ascend and GPU keep
    the convolution, which is fast there. Parameters and results are the same either way.

    Args:
        image_size: image side S.
        patch_size: patch side P.
        embed_dim: D.
        in_channels: C.
        as_matmul: compute as a matrix product; default: on CPU only.
        fused_kernels: cut patches and project them with ``ms_vit.models.layers``' fused CPU kernels (implies
            as_matmul).

    Inputs: x (B, C, S, S). Outputs: (B, N, D), patches in row-major grid order.
    """

    def __init__(self, image_size: int, patch_size: int, embed_dim: int, in_channels: int = 3,
                 as_matmul: Optional[bool] = None, fused_kernels: bool = False):
        super().__init__()
        self.num_patches = (image_size // patch_size) ** 2
        self.conv = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size,
                              has_bias=True, pad_mode="valid")
        on_cpu = ms.get_context("device_target") == "CPU"
        self.as_matmul = fused_kernels or (on_cpu if as_matmul is None else as_matmul)
        self.patchify = Patchify(patch_size, fused_kernels)
        self.project = Linear(embed_dim, in_channels * patch_size * patch_size, fused_kernels)

    def construct(self, x):
        if not self.as_matmul:
            x = self.conv(x)                                         # (B, D, S/P, S/P)
            b, d = x.shape[0], x.shape[1]
            return x.reshape(b, d, -1).transpose(0, 2, 1)            # (B, N, D)
        x = self.project(self.patchify(x), self.conv.weight, self.conv.bias)      # (B*N, D), weight read as (D, C*P*P)
        return x.reshape(-1, self.num_patches, x.shape[-1])          # (B, N, D)


class ViT(nn.Cell):
    """Vision Transformer: patch embedding, class token, position embedding, encoder, LayerNorm, head.

    Args:
        config: a ``ViTConfig`` (``create_model`` builds one from a variant name).
        fused_kernels: run on the fused CPU kernels (``ms_vit.models.layers.choose_kernels``): default on CPU when
            they can be built here; ``False`` for MindSpore's operators only (exports).
        device_kernels: run on the device's fused operators (Ascend: FlashAttention, one-operator GELU); refused
            elsewhere. Not run on hardware here (README, "Ascend and GPU").
        init_weights: draw the initial weights (``config.weight_init``); False when a checkpoint fills every
            weight (``create_model`` then also builds under ``no_init_parameters``: B/16 6.7 s -> 0.06 s).

    Inputs: images (B, C, S, S), normalised. Outputs: logits (B, K).
    """

    @property
    def compile_phase(self):
        return nn.Cell.compile_phase.fget(self)

    @compile_phase.setter
    def compile_phase(self, value):
        # MindSpore sets the phase of every sub-cell, one by one, on every call of a graph-mode network: 1.3 ms for
        # ViT-Ti/16's ~400 cells, 6 % of its batch-1 inference. Setting the phase it already holds changes nothing.
        if value != nn.Cell.compile_phase.fget(self):
            nn.Cell.compile_phase.fset(self, value)

    def __init__(self, config: ViTConfig, fused_kernels: Optional[bool] = None, device_kernels: bool = False,
                 init_weights: bool = True):
        super().__init__()
        self.config = config
        c = config
        self.kernels = kernels = choose_kernels(fused_kernels, device_kernels)
        self.fused_kernels = fused = kernels == CPU_FUSED
        self.patch_embedding = PatchEmbedding(c.image_size, c.patch_size, c.embed_dim, c.in_channels,
                                              fused_kernels=fused)
        self.cls = Parameter(initializer(TruncatedNormal(0.02), (1, 1, c.embed_dim)), name="cls")
        self.dist_token = (Parameter(initializer(TruncatedNormal(0.02), (1, 1, c.embed_dim)), name="dist_token")
                           if c.distilled else None)
        self.pos_embedding = Parameter(initializer(TruncatedNormal(0.02), (1, c.num_pos_embeddings, c.embed_dim)),
                                       name="pos_embedding")
        self.dropout = nn.Dropout(p=c.drop_rate)
        self.transformer = TransformerEncoder(c.embed_dim, c.depth, c.num_heads, c.mlp_dim, c.drop_rate,
                                              c.attn_drop_rate, c.drop_path_rate, c.layer_norm_eps,
                                              c.gelu_approximate, kernels, c.layer_scale_init)
        self.norm = LayerNorm(c.embed_dim, c.layer_norm_eps, fused)
        self.dense = Dense(c.embed_dim, c.num_classes, fused)
        self.dense_dist = Dense(c.embed_dim, c.num_classes, fused) if c.distilled else None
        self.mean_pool = c.global_pool == "mean"
        self.no_embed_class = c.no_embed_class
        self.num_prefix_tokens = c.num_prefix_tokens
        if init_weights:
            self.init_weights(c.weight_init)

    def init_weights(self, mode: str = "jax"):
        """``"jax"``, the ViT paper's (and timm's ``jax`` mode): Xavier-uniform Dense weights, zero biases, zero
        head; ``"timm"``, timm's default (DeiT's): truncated-normal(0.02) Dense weights and head, zero biases,
        class token N(0, 1e-6), patch projection uniform(+-1 / sqrt(fan_in)) as PyTorch's Conv2d. Both:
        truncated-normal(0.02) position embedding, LayerNorm ones and zeros."""
        def fill(param, init):
            param.set_data(initializer(init, param.shape, param.dtype))

        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Dense):
                fill(cell.weight, XavierUniform() if mode == "jax" else TruncatedNormal(0.02))
                fill(cell.bias, Zero())
        fill(self.pos_embedding, TruncatedNormal(0.02))
        if self.dist_token is not None:
            fill(self.dist_token, TruncatedNormal(0.02))
        if mode == "jax":
            for head in (self.dense, self.dense_dist):
                if head is not None:
                    fill(head.weight, Zero())
            fill(self.cls, TruncatedNormal(0.02))
        else:
            fill(self.cls, Normal(1e-6))
            conv = self.patch_embedding.conv
            bound = 1.0 / math.sqrt(math.prod(conv.weight.shape[1:]))
            fill(conv.weight, Uniform(bound))
            fill(conv.bias, Uniform(bound))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block's activations in the backward pass instead of keeping them (MindSpore's
        ``Cell.recompute``; timm's method of this name): the same gradients, a lower training peak, more compute.
        Under AMP call it after ``amp.apply`` (``amp.apply(recompute=True)`` does): MindSpore gives the recompute scope
        to the cells a block holds at this call, and AMP's cast wrappers added later would keep their outputs."""
        if enable:                               # (MindSpore cannot turn recomputation off again)
            for block in self.transformer.layers:
                for residual in block:           # a branch adding its residual in its last kernel kept its
                    residual.branch_adds = False  # activations under recompute (Ti/16: 1.26 GB vs 0.85 at depth 6)
                block.recompute()

    def embed(self, x):
        """Images (B, C, S, S) -> tokens (B, T + N, D): the T prefix tokens (class; distillation) and the patches,
        with position embedding."""
        x = self.patch_embedding(x)                                  # (B, N, D)
        batch = x.shape[0]
        prefix = [ops.tile(self.cls.astype(x.dtype), (batch, 1, 1))]                      # (B, 1, D)
        if self.dist_token is not None:
            prefix.append(ops.tile(self.dist_token.astype(x.dtype), (batch, 1, 1)))
        if self.no_embed_class:                                      # DeiT III: the patches only
            x = ops.cat(prefix + [x + self.pos_embedding.astype(x.dtype)], axis=1)
        else:
            x = ops.cat(prefix + [x], axis=1) + self.pos_embedding.astype(x.dtype)          # (B, T + N, D)
        return self.dropout(x)

    def forward_features(self, x):
        x = self.transformer(self.embed(x))
        return self.norm(x)                                          # (B, T + N, D)

    def construct(self, x):
        x = self.forward_features(x)
        if self.dense_dist is not None:                              # DeiT distilled: both heads, averaged
            return (self.dense(x[:, 0]) + self.dense_dist(x[:, 1])) / 2
        x = x[:, self.num_prefix_tokens:].mean(axis=1) if self.mean_pool else x[:, 0]   # (B, D)
        return self.dense(x)                                         # (B, K)


def variant_config(name: str, **overrides) -> ViTConfig:
    """The ``ViTConfig`` of a variant name such as ``vit_b_16_224``, with fields overridden."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ViTConfig)}
    if unknown:
        raise TypeError(f"unknown ViT option(s): {', '.join(sorted(unknown))}")
    return ViTConfig(**dict(VARIANTS[name], **{k: v for k, v in overrides.items() if v is not None}))


def config_name(config: ViTConfig) -> Optional[str]:
    """The variant name whose architecture this config has (ignoring class count and numerics)."""
    for name, arch in VARIANTS.items():
        if all(getattr(config, k) == v for k, v in arch.items() if k != "crop_pct"):
            return name
    return None


def count_params(net: nn.Cell) -> int:
    return sum(math.prod(p.shape) for p in net.trainable_params())
