"""Run by tests (a process of its own: MindSpore's IR dump): the training graph MindSpore compiles for the device,
for each case given, as its validated IR (the front end's graph, with every operator's input dtypes and scope).

    python tests/graph_probe.py OUT LEVEL:DTYPE[:device][:fused][:recompute] ...

``device``: the model built with the device kernels (FlashAttention, the one-operator GELU) as on an Atlas A2
Ascend: this CPU has neither (nor bfloat16 kernels), so the compilation stops in the backend, after the front end
wrote the graph; ``fused``: on ms_vit's fused CPU kernels (O0 only: they compute in float32); ``recompute``: each
block recomputed in the backward pass (``amp.apply(recompute=True)``, as train.py ``--recompute``). One tiny ViT of
one block with stochastic depth, AMP at LEVEL in DTYPE as train.py applies it. The graph of case i goes to OUT/<i>/.
"""
import os
import sys

import mindspore as ms
import numpy as np
from mindspore import nn

from ms_vit import create_model
from ms_vit.models import amp, layers
from ms_vit.training.loss import LabelSmoothingCrossEntropy
from ms_vit.training.train_step import TrainStep


def compile_case(out: str, level: str, dtype: str, options) -> None:
    ms.set_context(save_graphs=1, save_graphs_path=out)
    net = create_model("vit_ti_16_224", num_classes=5, image_size=32, patch_size=8, embed_dim=64, depth=1,
                       num_heads=4, mlp_dim=96, drop_path_rate=0.1, fused_kernels="fused" in options,
                       device_kernels="device" in options)
    net = amp.apply(net, level, dtype, recompute="recompute" in options)
    scaler = amp.loss_scale_manager(level, dtype)
    step = TrainStep(nn.WithLossCell(net, LabelSmoothingCrossEntropy(0.1)), nn.SGD(net.trainable_params(), 0.01),
                     scaler.get_update_cell() if scaler else None)
    step.set_train(True)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    try:
        step.compile(x, ms.Tensor(np.array([0, 1], np.int32)))
        print(out, "compiled", flush=True)
    except (RuntimeError, TypeError) as exc:     # the device's operators (or bfloat16 ones) have no CPU kernel
        reason = next((line for line in str(exc).splitlines() if "fail" in line), "")
        print(out, "stopped in the backend:", reason[:200], flush=True)


def main(out, *cases):
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    layers.check_device_kernels = lambda target, soc: None           # build as on an Atlas A2 Ascend
    for i, case in enumerate(cases):
        level, dtype, *options = case.split(":")
        compile_case(os.path.join(out, str(i)), level, dtype, options)


if __name__ == "__main__":
    main(*sys.argv[1:])
