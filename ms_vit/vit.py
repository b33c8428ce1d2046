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

Shapes in comments: B batch, C channels, S image side, P patch side, N patches,
D embedding dim, H heads, d = D / H head dim, M feed-forward (MLP) dim, K classes.
"""
import dataclasses
import math
import re
from typing import Optional, Tuple

import mindspore as ms
from mindspore import nn, ops, Parameter
from mindspore.common.initializer import initializer, TruncatedNormal, XavierUniform, Zero

from . import kernels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass
class ViTConfig:
    """Everything needed to rebuild a ViT and to feed it: architecture, numerics, preprocessing.

    It travels inside every checkpoint ms_vit writes (see ``ms_vit.checkpoint``).
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
    # Regularisation (training only).
    drop_rate: float = 0.0            # dropout after the position embedding, in the MLP and the projection
    attn_drop_rate: float = 0.0       # dropout on the attention weights
    drop_path_rate: float = 0.0       # stochastic depth, linearly increasing to this value at the last block
    # Preprocessing the weights expect.
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def __post_init__(self):
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.global_pool not in ("token", "mean"):
            raise ValueError(f"global_pool must be 'token' or 'mean', not {self.global_pool!r}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ViTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


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


def gelu(x, approximate: bool):
    """GELU: exact ``0.5 x (1 + erf(x / sqrt 2))`` or the tanh approximation."""
    if approximate:
        return 0.5 * x * (1.0 + ops.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    return 0.5 * x * (1.0 + ops.erf(x * 0.7071067811865476))


def cpu_kernel(factory, *args):
    """``factory(*args)``, the fused CPU op of ``ms_vit.kernels``, when running on CPU (else None; also None
    when it could not be compiled: the caller then uses MindSpore's operators, same results)."""
    return factory(*args) if ms.get_context("device_target") == "CPU" else None


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis with an explicit epsilon (kept float32 under AMP O2).

    On CPU it runs as a fused kernel (``ms_vit.kernels``; same parameters, same numbers): MindSpore's CPU
    LayerNorm and LayerNormGrad are 7x and ~20x slower than the memory traffic they need."""

    def __init__(self, dim: int, eps: float):
        super().__init__((dim,), begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        self.kernel = cpu_kernel(kernels.layer_norm_op)
        self.fused = self.kernel is not None
        self.eps = ms.Tensor([eps], ms.float32)

    def construct(self, x):
        if self.fused:
            return self.kernel(x.astype(ms.float32), self.gamma.astype(ms.float32), self.beta.astype(ms.float32),
                               self.eps).astype(x.dtype)
        return super().construct(x)


class Dense(nn.Dense):
    """``nn.Dense`` (same parameters). On CPU it runs as ``kernels.Linear``: the same products with faster
    gradients (MindSpore's CPU BiasAddGrad runs at ~0.5 GB/s; one orientation of its transposed MatMul at half
    speed)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels)
        self.linear = cpu_kernel(kernels.linear, out_channels, in_channels)
        self.fused = self.linear is not None

    def construct(self, x):
        if not self.fused:
            return super().construct(x)
        y = self.linear(x.reshape(-1, x.shape[-1]), self.weight, self.bias)        # (rows, out)
        return y.reshape(x.shape[:-1] + (y.shape[-1],))


class Attention(nn.Cell):
    """Multi-head self-attention.

    Args:
        dim: embedding dim D.
        num_heads: number of heads H; head dim d = D / H, scores scaled by d ** -0.5.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.

    Inputs: x (B, N, D). Outputs: (B, N, D).
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = Dense(dim, dim * 3)
        self.attn_drop = nn.Dropout(p=attn_drop)
        self.out = Dense(dim, dim)
        self.out_drop = nn.Dropout(p=proj_drop)
        self.q_kt = ops.BatchMatMul(transpose_b=True)
        self.attn_v = ops.BatchMatMul()          # its gradient uses transposed matmuls, no Transpose ops
        # On CPU the head split and merge run as row-copying kernels, the softmax as a one-pass kernel
        # (ms_vit.kernels): MindSpore's CPU Transpose keeps an 8-byte index per element for every transpose in
        # the graph and gathers through it; its softmax gradient is four broadcasting ops.
        self.split_kernel = cpu_kernel(kernels.split_heads_op)
        self.merge_kernel = cpu_kernel(kernels.swap_middle_axes_op)
        self.softmax_kernel = cpu_kernel(kernels.softmax_op)
        self.fused = self.split_kernel is not None

    def split_heads(self, qkv):
        """(B, N, 3D) -> q * scale, k, v, each (B, H, N, d)."""
        b, n, _ = qkv.shape
        if self.fused:
            qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim)          # (B, N, 3, H, d)
            q, k, v = self.split_kernel(qkv.astype(ms.float32))                # q scaled by d ** -0.5
            return q.astype(qkv.dtype), k.astype(qkv.dtype), v.astype(qkv.dtype)
        # Split, then reshape each of q, k, v: slicing a transposed (3, B, H, N, d) view instead makes the
        # CPU matmuls take a strided path ~5x slower.
        q, k, v = ops.split(qkv, qkv.shape[-1] // 3, axis=-1)                 # 3 x (B, N, D)
        q = q.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        k = k.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = v.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        return q * self.scale, k, v

    def merge_heads(self, x):
        """(B, H, N, d) -> (B, N, D)."""
        b, h, n, d = x.shape
        if self.fused:
            return self.merge_kernel(x.astype(ms.float32)).astype(x.dtype).reshape(b, n, h * d)
        return x.transpose(0, 2, 1, 3).reshape(b, n, h * d)

    def construct(self, x):
        q, k, v = self.split_heads(self.qkv(x))                      # 3 x (B, H, N, d), q scaled
        attn = self.q_kt(q, k).astype(ms.float32)                    # (B, H, N, N)
        # Softmax in float32 so that float16 compute (AMP O2) cannot overflow.
        attn = self.softmax_kernel(attn) if self.fused else ops.softmax(attn, axis=-1)
        attn = self.attn_drop(attn.astype(x.dtype))
        x = self.attn_v(attn, v)                                     # (B, H, N, d)
        return self.out_drop(self.out(self.merge_heads(x)))          # (B, N, D)


class FeedForward(nn.Cell):
    """The MLP of a transformer block: Dense, GELU, dropout, Dense, dropout.

    Args:
        dim: embedding dim D.
        hidden_dim: hidden dim M.
        dropout: dropout after the activation and after the second Dense.
        gelu_approximate: tanh-approximated GELU instead of the exact (erf) one.

    Inputs: x (B, N, D). Outputs: (B, N, D).
    """

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, gelu_approximate: bool = False):
        super().__init__()
        self.gelu_approximate = gelu_approximate
        # On CPU the exact GELU runs as one fused kernel (ms_vit.kernels): MindSpore's CPU Erf is ~15x slower.
        self.gelu_kernel = None if gelu_approximate else cpu_kernel(kernels.gelu_erf_op)
        self.fused_gelu = self.gelu_kernel is not None
        self.dense1 = Dense(dim, hidden_dim)
        self.drop1 = nn.Dropout(p=dropout)
        self.dense2 = Dense(hidden_dim, dim)
        self.drop2 = nn.Dropout(p=dropout)

    def construct(self, x):
        x = self.dense1(x)                                           # (B, N, M)
        if self.fused_gelu:
            x = self.gelu_kernel(x.astype(ms.float32)).astype(x.dtype)
        else:
            x = gelu(x, self.gelu_approximate)
        return self.drop2(self.dense2(self.drop1(x)))                # (B, N, D)


class DropPath(nn.Cell):
    """Stochastic depth: in training, zero a sample's residual branch with probability ``drop_prob``
    and scale the kept ones by 1 / (1 - drop_prob). Identity in evaluation."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.keep_prob = 1.0 - drop_prob

    def construct(self, x):
        if not self.training or self.keep_prob == 1.0:
            return x
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = ops.floor(self.keep_prob + ops.rand(mask_shape, dtype=x.dtype))   # 1 kept, 0 dropped
        return x / self.keep_prob * mask


class ResidualCell(nn.Cell):
    """``x + drop_path(cell(x))``.

    Args:
        cell: the residual branch (here LayerNorm followed by attention or feed-forward).
        drop_path: stochastic-depth probability of this branch.
    """

    def __init__(self, cell: nn.Cell, drop_path: float = 0.0):
        super().__init__()
        self.cell = cell
        self.drop_path = DropPath(drop_path)

    def construct(self, x):
        return x + self.drop_path(self.cell(x))


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

    Inputs: x (B, N, D). Outputs: (B, N, D).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_dim: int, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, layer_norm_eps: float = 1e-6,
                 gelu_approximate: bool = False):
        super().__init__()
        drop_paths = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layers = nn.SequentialCell([
            nn.SequentialCell([
                ResidualCell(nn.SequentialCell([
                    LayerNorm(dim, layer_norm_eps),
                    Attention(dim, num_heads, attn_drop_rate, drop_rate)]), drop_paths[i]),
                ResidualCell(nn.SequentialCell([
                    LayerNorm(dim, layer_norm_eps),
                    FeedForward(dim, mlp_dim, drop_rate, gelu_approximate)]), drop_paths[i]),
            ])
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

    Inputs: x (B, C, S, S). Outputs: (B, N, D), patches in row-major grid order.
    """

    def __init__(self, image_size: int, patch_size: int, embed_dim: int, in_channels: int = 3,
                 as_matmul: Optional[bool] = None):
        super().__init__()
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.conv = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size,
                              has_bias=True, pad_mode="valid")
        self.as_matmul = ms.get_context("device_target") == "CPU" if as_matmul is None else as_matmul
        self.matmul = ops.MatMul(transpose_b=True)
        self.patchify_kernel = cpu_kernel(kernels.patchify_op, patch_size)
        self.linear = cpu_kernel(kernels.linear, embed_dim, in_channels * patch_size * patch_size)

    def construct(self, x):
        if not self.as_matmul:
            x = self.conv(x)                                         # (B, D, S/P, S/P)
            b, d = x.shape[0], x.shape[1]
            return x.reshape(b, d, -1).transpose(0, 2, 1)            # (B, N, D)
        b, c, g, p = x.shape[0], x.shape[1], self.grid_size, self.patch_size
        if self.patchify_kernel is not None:
            x = self.patchify_kernel(x.astype(ms.float32)).astype(x.dtype)          # (B, N, C*P*P)
        else:
            x = x.reshape(b, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5)           # (B, S/P, S/P, C, P, P)
        x = x.reshape(b * g * g, c * p * p)                          # (B*N, C*P*P)
        weight = self.conv.weight.reshape(self.conv.weight.shape[0], -1)           # (D, C*P*P)
        if self.linear is not None:
            x = self.linear(x, weight, self.conv.bias)                              # (B*N, D)
        else:
            x = self.matmul(x, weight.astype(x.dtype)) + self.conv.bias.astype(x.dtype)
        return x.reshape(b, g * g, -1)                               # (B, N, D)


class ViT(nn.Cell):
    """Vision Transformer: patch embedding, class token, position embedding, encoder, LayerNorm, head.

    Args:
        config: a ``ViTConfig`` (``create_model`` builds one from a variant name).

    Inputs: images (B, C, S, S), normalised. Outputs: logits (B, K).
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        c = config
        self.patch_embedding = PatchEmbedding(c.image_size, c.patch_size, c.embed_dim, c.in_channels)
        self.cls = Parameter(initializer(TruncatedNormal(0.02), (1, 1, c.embed_dim)), name="cls")
        self.pos_embedding = Parameter(initializer(TruncatedNormal(0.02), (1, c.num_patches + 1, c.embed_dim)),
                                       name="pos_embedding")
        self.dropout = nn.Dropout(p=c.drop_rate)
        self.transformer = TransformerEncoder(c.embed_dim, c.depth, c.num_heads, c.mlp_dim, c.drop_rate,
                                              c.attn_drop_rate, c.drop_path_rate, c.layer_norm_eps,
                                              c.gelu_approximate)
        self.norm = LayerNorm(c.embed_dim, c.layer_norm_eps)
        self.dense = Dense(c.embed_dim, c.num_classes)
        self.mean_pool = c.global_pool == "mean"
        self._init_weights()

    def _init_weights(self):
        """As the ViT paper and timm: Xavier-uniform Dense weights with zero bias, zero head."""
        for _, cell in self.cells_and_names():
            if isinstance(cell, nn.Dense):
                cell.weight.set_data(initializer(XavierUniform(), cell.weight.shape, cell.weight.dtype))
                cell.bias.set_data(initializer(Zero(), cell.bias.shape, cell.bias.dtype))
        self.dense.weight.set_data(initializer(Zero(), self.dense.weight.shape, self.dense.weight.dtype))

    def forward_features(self, x):
        x = self.patch_embedding(x)                                  # (B, N, D)
        cls = ops.broadcast_to(self.cls.astype(x.dtype), (x.shape[0], 1, x.shape[2]))
        x = ops.cat((cls, x), axis=1) + self.pos_embedding.astype(x.dtype)   # (B, 1 + N, D)
        x = self.transformer(self.dropout(x))
        return self.norm(x)                                          # (B, 1 + N, D)

    def construct(self, x):
        x = self.forward_features(x)
        x = x[:, 1:].mean(axis=1) if self.mean_pool else x[:, 0]     # (B, D)
        return self.dense(x)                                         # (B, K)


_NAME = re.compile(r"^vit_(ti|s|b|l|h)_(\d+)_(\d+)$")


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
