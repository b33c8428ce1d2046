"""Mixed precision for training: which cells of the ViT compute in float16 or bfloat16 at each AMP level.

ms_vit applies the levels cell by cell, as MindSpore's own O2 does (``Cell.to_float`` on the low-precision cells, the
float32 ones wrapped so that their outputs are cast back), with one table of which cells go where:

=====  ==================================================================  ===========================================
level  computes in float16 / bfloat16                                      stays float32
=====  ==================================================================  ===========================================
O0     nothing                                                             everything
O1     the matrix products: Dense layers, the patch projection, the         the rest: LayerNorm, softmax, GELU, sums
       attention's two batched matmuls (MindSpore's O1 white list), or
       FlashAttention (``--device_kernels``)
O2     everything else                                                     LayerNorm (MindSpore's O2 black list) and
                                                                           the attention softmax
O3     everything                                                          nothing
=====  ==================================================================  ===========================================

The loss is float32 at every level: the network's logits are cast to float32 before it. Why not
``mindspore.amp.auto_mixed_precision``: its O1 rewrites the network's source with ``mindspore.rewrite``, which
fails on MindSpore's own functional operators (``TypeError ... _PyboostBroadcastToPrim``, MindSpore 2.10), and its
O2 black list has no softmax, so the attention weights were computed in float16. ``tests/test_amp.py`` checks the
dtypes of every operator in the training graph MindSpore compiles for the device, at every level. (On CPU,
MindSpore's backend then runs some float16 operators on float32 kernels.)

float16 trains with dynamic loss scaling (skipped steps on overflow; ``ms_vit.training.guard`` stops a run whose steps
keep
overflowing); bfloat16 has float32's range and trains without. MindSpore trains in bfloat16 on Ascend 910B and later
(Atlas A2/A3, 950) only: elsewhere it is refused with one line (the CPU has no bfloat16 matrix product).
"""
from typing import Optional

import mindspore as ms
from mindspore import nn
from mindspore.train import DynamicLossScaleManager

from .. import device
from . import layers

LEVELS = ("O0", "O1", "O2", "O3")
DTYPES = {"float16": ms.float16, "bfloat16": ms.bfloat16}
# O1: the cells that compute in low precision; O2: the cells that stay float32 (O3: none)
LOW_PRECISION_CELLS = (nn.Dense, nn.Conv2d, layers.Linear, layers.BatchMatMul, layers.FlashAttention)
FLOAT32_CELLS = (nn.LayerNorm, layers.Softmax)
# SoCs on which MindSpore trains in bfloat16: Atlas A2 and later (910B, 910C, 950)
BFLOAT16_SOCS = device.ATLAS_A2_AND_LATER


def default_level(device_target: str) -> str:
    """O2 on Ascend, whose float16 Cube units are several times faster; O0 (float32) on CPU and GPU."""
    return "O2" if device_target == "Ascend" else "O0"


def check(level: str, dtype: str, device_target: str, soc: Optional[str] = None) -> None:
    """Refuse, with one line, a level or dtype this device cannot train with."""
    if level not in LEVELS:
        raise ValueError(f"unknown --amp_level {level}: choose one of {', '.join(LEVELS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown --amp_dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if dtype == "bfloat16" and level != "O0":
        soc = device.ascend_soc() if soc is None else soc
        if device_target != "Ascend" or soc not in BFLOAT16_SOCS:
            where = f"Ascend ({soc or 'SoC unknown'})" if device_target == "Ascend" else device_target
            raise ValueError(f"--amp_dtype bfloat16 trains on Ascend 910B and later (Atlas A2/A3) only, not on "
                             f"{where}: use --amp_dtype float16 (with loss scaling) or --amp_level O0")


class _CastOutput(nn.Cell):
    """``cell(*inputs)`` cast to ``dtype``; parameter names unchanged, and the cell's attributes read through (the
    patch embedding reads its convolution's weight)."""

    def __init__(self, cell: nn.Cell, dtype):
        super().__init__(auto_prefix=False)
        self.cell, self.dtype = cell, dtype

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            cell = self.__dict__.get("_cells", {}).get("cell")
            if cell is None:
                raise
            return getattr(cell, name)

    def construct(self, *inputs):
        return self.cell(*inputs).astype(self.dtype)


def _wrap(network: nn.Cell, classes, compute_dtype, output_dtype) -> None:
    """Each sub-cell of one of ``classes`` computes in ``compute_dtype``, its output cast to ``output_dtype``."""
    for name, cell in list(network.name_cells().items()):
        if isinstance(cell, classes):
            network._cells[name] = _CastOutput(cell.to_float(compute_dtype), output_dtype)
        else:
            _wrap(cell, classes, compute_dtype, output_dtype)
    if isinstance(network, nn.SequentialCell):
        network.cell_list = list(network.cells())


def apply(network: nn.Cell, level: str, dtype: str = "float16", recompute: bool = False) -> nn.Cell:
    """``network`` computing at AMP ``level`` in ``dtype`` (see the module docstring), its output float32. The
    cells are changed in place (parameters and their names stay), so build the network without the fused CPU
    kernels, which compute in float32 only.

    ``recompute``: each transformer block recomputed in the backward pass (``ViT.set_grad_checkpointing``), set
    after the cast wrappers are in place: MindSpore gives the recompute scope to the cells a block holds when it is
    set, so wrappers added later would keep their outputs (a block's LayerNorm outputs, the softmax at O2)."""
    if level != "O0":
        low = DTYPES[dtype]
        if level == "O1":
            _wrap(network, LOW_PRECISION_CELLS, low, ms.float32)
        else:
            network.to_float(low)
            if level == "O2":
                _wrap(network, FLOAT32_CELLS, ms.float32, low)
    if recompute:
        network.set_grad_checkpointing(True)
    return network if level == "O0" else _CastOutput(network, ms.float32)


def loss_scale_manager(level: str, dtype: str = "float16"):
    """Dynamic loss scaling for float16 (O1-O3); none for float32 and bfloat16."""
    if level != "O0" and dtype == "float16":
        return DynamicLossScaleManager(init_loss_scale=2.0 ** 16, scale_factor=2, scale_window=1000)
    return None
