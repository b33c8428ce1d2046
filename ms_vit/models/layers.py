"""The ViT's building blocks whose implementation depends on the backend, in one place, so that ``vit.py`` reads
as the model's math.

Each block computes the same function with the same parameters in up to three ways (``kernels``):

* ``OPS``, MindSpore's operators: every device, and what exports (MINDIR, ONNX) are built from;
* ``CPU_FUSED``, on CPU, the fused kernels of ``ms_vit.models.kernels`` (AOT custom ops compiled with g++; see there for
  what each replaces and why): faster and lighter, same numbers (``tests/test_kernels.py``);
* ``DEVICE``, on Ascend 910B and later (Atlas A2/A3), the device's fused operators: FlashAttention
  (``ops.flash_attention_score``, float16/bfloat16 inputs: AMP O1-O3) for the attention and MindSpore's ``GeluExt``
  (``mint.nn.functional.gelu``'s operator, one kernel; ``ops.gelu`` builds the erf composite) for the exact GELU.
  Opt-in: this machine has no Ascend, so they are not run on hardware here; what can be checked on CPU is (the
  operators of the training graph compiled at every AMP level, FlashAttention's argument layout against its
  documented formula, the refusal off Atlas A2).

``choose_kernels(fused_kernels, device_kernels)`` turns ``create_model``'s switches into the choice:
``fused_kernels=None`` (default) uses the CPU kernels on CPU when they can be built here, ``False`` never, ``True``
requires them; ``device_kernels=True`` requires an Ascend SoC with FlashAttention (``check_device_kernels``). The
CPU kernels compute in float32: under AMP (O1-O3) build the model with ``fused_kernels=False``, as train.py does.
The attention maps (``Attention.attention_weights``) are always computed unfused.
"""
from typing import Optional

import mindspore as ms
from mindspore import nn, ops
from mindspore.ops.auto_generate import GeluExt

from .. import device
from . import kernels

OPS, CPU_FUSED, DEVICE = "ops", "cpu_fused", "device"


def check_device_kernels(target: str, soc: str) -> None:
    """Refuse the device kernels where MindSpore has no FlashAttention: off Ascend, and on Ascend SoCs before Atlas A2
    (910A, 310P, 310B)."""
    if target != "Ascend" or soc not in device.ATLAS_A2_AND_LATER:
        where = f"Ascend ({soc or 'SoC unknown'})" if target == "Ascend" else target
        raise ValueError(f"device_kernels=True (--device_kernels): FlashAttention and the one-operator GELU run on "
                         f"Ascend 910B and later (Atlas A2/A3) only, not on {where}")


def choose_kernels(fused_kernels: Optional[bool] = None, device_kernels: bool = False) -> str:
    """What a model built now runs on (see the module docstring)."""
    target = ms.get_context("device_target")
    if device_kernels:
        check_device_kernels(target, device.ascend_soc())
        return DEVICE
    if fused_kernels is False:
        return OPS
    if fused_kernels and target != "CPU":
        raise ValueError("fused_kernels=True: the fused kernels run on CPU only")
    available = target == "CPU" and kernels.compiled_library() is not None
    if fused_kernels and not available:
        raise ValueError("fused_kernels=True: the fused CPU kernels cannot be built here (a C++ compiler, a writable "
                         "MS_VIT_CACHE and MS_VIT_FUSED_KERNELS unset are needed)")
    return CPU_FUSED if available else OPS


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis with an explicit epsilon (kept float32 under AMP O2); fused: one kernel
    for the forward pass and one for the gradient (MindSpore's CPU LayerNormGrad is ~20x slower)."""

    def __init__(self, dim: int, eps: float, fused: bool = False):
        super().__init__((dim,), begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        self.fused = fused
        self.kernel = kernels.layer_norm_op() if fused else None
        self.eps = ms.Tensor([eps], ms.float32)

    def construct(self, x):
        if self.fused:
            return self.kernel(x.astype(ms.float32), self.gamma.astype(ms.float32), self.beta.astype(ms.float32),
                               self.eps).astype(x.dtype)
        return super().construct(x)


class Linear(nn.Cell):
    """``x (R, I), weight (O, I), bias (O,) [, residual (R, O)] -> x weight^T + bias [+ residual]`` for parameters held
    elsewhere (a Dense layer's, the patch embedding's convolution's: ``weight`` may be (O, ...), read as (O, I));
    fused: ``kernels.Linear``, one op forward and one backward on oneDNN's sgemm (``gelu``: with the exact GELU of
    the result in the same op; fused only)."""

    def __init__(self, out_features: int, in_features: int, fused: bool = False, gelu: bool = False):
        super().__init__()
        if gelu and not fused:
            raise ValueError("Linear(gelu=True) needs the fused kernels")
        self.fused = fused
        self.kernel = kernels.linear(gelu) if fused else None
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x, weight, bias, residual=None):
        if self.fused:
            return self.kernel(x, weight, bias, residual)
        y = self.matmul(x, weight.reshape(weight.shape[0], -1).astype(x.dtype)) + bias.astype(x.dtype)
        return y if residual is None else y + residual


class BatchMatMul(nn.Cell):
    """``ops.BatchMatMul`` as a cell, so that the AMP levels (``ms_vit.models.amp``) can choose its precision as a Dense
    layer's. ``a (..., N, K) @ b (..., K, M)`` (``transpose_b``: ``b (..., M, K)``)."""

    def __init__(self, transpose_b: bool = False):
        super().__init__()
        self.matmul = ops.BatchMatMul(transpose_b=transpose_b)

    def construct(self, a, b):
        return self.matmul(a, b)


class Dense(nn.Dense):
    """``nn.Dense`` (same parameters); fused: ``Linear`` on the fused kernels, which can also add a residual
    (``construct(x, residual)``) or apply the exact GELU (``gelu``) in the same op.

    Inputs: x (..., in), residual (..., out) or None. Outputs: (..., out)."""

    def __init__(self, in_channels: int, out_channels: int, fused: bool = False, gelu: bool = False):
        super().__init__(in_channels, out_channels)
        self.fused = fused
        self.linear = Linear(out_channels, in_channels, fused, gelu) if fused else None

    def construct(self, x, residual=None):
        if not self.fused:
            y = super().construct(x)
            return y if residual is None else y + residual
        rows = None if residual is None else residual.reshape(-1, residual.shape[-1])
        y = self.linear(x.reshape(-1, x.shape[-1]), self.weight, self.bias, rows)        # (rows, out)
        return y.reshape(x.shape[:-1] + (y.shape[-1],))


class GELU(nn.Cell):
    """GELU: exact ``0.5 x (1 + erf(x / sqrt 2))`` or the tanh approximation; fused: the exact one in one CPU kernel;
    ``one_op`` (``DEVICE`` kernels): the exact one as MindSpore's single GeLU operator ``GeluExt`` (what
    ``mint.nn.functional.gelu`` dispatches to: one kernel on Ascend, none on CPU; ``ops.gelu`` builds the erf
    composite). Called as the primitive: through ``mint``'s overloaded function the node lost its cell's scope under
    AMP O1, and with it the recompute of ``--recompute``."""

    def __init__(self, approximate: bool = False, fused: bool = False, one_op: bool = False):
        super().__init__()
        self.approximate = approximate
        self.fused = fused and not approximate
        self.one_op = one_op and not approximate
        self.kernel = kernels.gelu_erf_op() if self.fused else None
        self.gelu_op = GeluExt() if self.one_op else None

    def construct(self, x):
        if self.approximate:
            return 0.5 * x * (1.0 + ops.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
        if self.fused:
            return self.kernel(x.astype(ms.float32)).astype(x.dtype)
        if self.one_op:
            return self.gelu_op(x)
        return 0.5 * x * (1.0 + ops.erf(x * 0.7071067811865476))


class Softmax(nn.Cell):
    """Softmax over the last axis of a float32 tensor; fused: one pass per row, also for the gradient
    (MindSpore expands the gradient into four broadcasting ops)."""

    def __init__(self, fused: bool = False):
        super().__init__()
        self.fused = fused
        self.kernel = kernels.softmax_op() if fused else None

    def construct(self, x):
        return self.kernel(x) if self.fused else ops.softmax(x, axis=-1)


class FlashAttention(nn.Cell):
    """``softmax(q k^T) v`` in one fused kernel: ``ops.flash_attention_score`` (Ascend 910B and later; float16 or
    bfloat16; head dim a multiple of 16, as every ViT variant's 64 or 80). q, k, v come from ``SplitHeads`` in the
    (B, H, N, d) layout that the operator calls "BNSD", q already scaled by d ** -0.5 (so ``scalar_value`` 1).

    ``low_precision`` tells the attention to use it: set when AMP O1 runs this cell in float16/bfloat16
    (``to_float``) although its inputs arrive in float32; at O2/O3 they arrive in low precision.

    Inputs: q, k, v (B, H, N, d). Outputs: (B, H, N, d).
    """

    def __init__(self, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.low_precision = False
        # the operator; tests/test_device_path.py puts its documented formula here to check the arguments on CPU
        self.attention_op = ops.flash_attention_score

    def to_float(self, dst_type):
        self.low_precision = dst_type != ms.float32
        return super().to_float(dst_type)

    def construct(self, q, k, v):
        return self.attention_op(q, k, v, self.num_heads, keep_prob=1.0, scalar_value=1.0, input_layout="BNSD")


class SplitHeads(nn.Cell):
    """(B, N, 3D) -> q * d ** -0.5, k, v, each (B, H, N, d); fused: a row-copying kernel (MindSpore's CPU
    Transpose keeps an 8-byte index per element for each transpose in the graph)."""

    def __init__(self, num_heads: int, head_dim: int, fused: bool = False):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = num_heads, head_dim, head_dim ** -0.5
        self.fused = fused
        self.kernel = kernels.split_heads_op() if fused else None

    def construct(self, qkv):
        b, n, _ = qkv.shape
        if self.fused:
            qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim)          # (B, N, 3, H, d)
            q, k, v = self.kernel(qkv.astype(ms.float32))                      # q scaled by d ** -0.5
            return q.astype(qkv.dtype), k.astype(qkv.dtype), v.astype(qkv.dtype)
        # Split, then reshape each of q, k, v: slicing a transposed (3, B, H, N, d) view instead makes the
        # CPU matmuls take a strided path ~5x slower.
        q, k, v = ops.split(qkv, qkv.shape[-1] // 3, axis=-1)                 # 3 x (B, N, D)
        q = q.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        k = k.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = v.reshape(b, n, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        return q * self.scale, k, v


class MergeHeads(nn.Cell):
    """(B, H, N, d) -> (B, N, D); fused: a row-copying kernel."""

    def __init__(self, fused: bool = False):
        super().__init__()
        self.fused = fused
        self.kernel = kernels.swap_middle_axes_op() if fused else None

    def construct(self, x):
        b, h, n, d = x.shape
        if self.fused:
            return self.kernel(x.astype(ms.float32)).astype(x.dtype).reshape(b, n, h * d)
        return x.transpose(0, 2, 1, 3).reshape(b, n, h * d)


class Patchify(nn.Cell):
    """Images (B, C, S, S) -> patch rows (B * N, C * P * P), each row a patch in (C, P, P) order, patches in
    row-major grid order; fused: a row-copying kernel."""

    def __init__(self, patch_size: int, fused: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.fused = fused
        self.kernel = kernels.patchify_op(patch_size) if fused else None

    def construct(self, x):
        b, c, s, p = x.shape[0], x.shape[1], x.shape[2], self.patch_size
        g = s // p
        if self.fused:
            x = self.kernel(x.astype(ms.float32)).astype(x.dtype)                  # (B, N, C*P*P)
        else:
            x = x.reshape(b, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5)           # (B, S/P, S/P, C, P, P)
        return x.reshape(b * g * g, c * p * p)
