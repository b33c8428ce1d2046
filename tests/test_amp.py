"""AMP levels (ms_vit.models.amp): the dtypes the compiled training graph really computes with, at every level; O1 and
O3
train; bfloat16 is refused where MindSpore cannot train in it."""
import re
import subprocess
import sys

import pytest
from conftest import ROOT
from helpers import TINY_ARGS, assert_clean_error, run_script

# One training step of a tiny ViT at an AMP level, with MindSpore's IR dump on: the graph MindSpore's front end
# compiles and hands to the device's backend (its validated IR), with the dtypes of every operator's inputs. (The
# CPU backend then runs some float16 operators on float32 kernels; a device runs them as this graph says.)
PROBE = '''
import os, sys
level, dtype, out = sys.argv[1:4]
os.environ["MS_DEV_SAVE_GRAPHS"] = "1"
os.environ["MS_DEV_SAVE_GRAPHS_PATH"] = out
import numpy as np, mindspore as ms
from mindspore import nn
ms.set_device("CPU"); ms.set_context(mode=ms.GRAPH_MODE)
from ms_vit import create_model
from ms_vit.models import amp
from ms_vit.training.loss import LabelSmoothingCrossEntropy
from ms_vit.training.train_step import TrainStep
net = create_model("vit_ti_16_224", num_classes=5, image_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3,
                   mlp_dim=96, fused_kernels=False)
scaler = amp.loss_scale_manager(level, dtype)
step = TrainStep(nn.WithLossCell(amp.apply(net, level, dtype), LabelSmoothingCrossEntropy(0.1)),
                 nn.SGD(net.trainable_params(), 0.01), scaler.get_update_cell() if scaler else None)
x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
print("loss", float(step(x, ms.Tensor(np.array([0, 1], np.int32)))[0].asnumpy()))
'''
_NODE = re.compile(r"= (?:PrimFunc_)?(\w+)\(")


def forward_input_dtypes(ir_text: str) -> dict:
    """Operator name -> the set of dtypes of its tensor inputs, over the forward nodes of a compiled graph's IR (the
    line after a node lists its input and output types; backward nodes name their ``forward_node_name``)."""
    found, lines = {}, ir_text.splitlines()
    for line, types in zip(lines, lines[1:]):
        match = _NODE.search(line)
        if not match or "forward_node_name" in line or "->" not in types:
            continue
        inputs = types.split("->")[0]
        found.setdefault(match.group(1), set()).update(re.findall(r"Tensor\[(\w+)\]", inputs))
    return found


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The forward dtypes of the compiled training graph at each level (float16)."""
    folder = tmp_path_factory.mktemp("amp")
    probe = folder / "probe.py"
    probe.write_text(PROBE)
    found = {}
    for level in ("O0", "O1", "O2", "O3"):
        out = folder / level
        run = subprocess.run([sys.executable, str(probe), level, "float16", str(out)], cwd=ROOT, capture_output=True,
                             text=True, timeout=300, env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
        assert run.returncode == 0 and "loss " in run.stdout, run.stderr[-3000:]
        graphs = sorted(out.glob("*_validate_*.ir"), key=lambda p: p.stat().st_size)
        found[level] = forward_input_dtypes(graphs[-1].read_text())        # the training graph: the largest
    return found


def test_o0_is_float32(graphs):
    floats = {dtype for dtypes in graphs["O0"].values() for dtype in dtypes if dtype.startswith(("Float", "BFloat"))}
    assert floats == {"Float32"}


def test_o1_runs_the_matrix_products_in_float16(graphs):
    g = graphs["O1"]
    assert g["MatMul"] == g["BatchMatMul"] == {"Float16"}
    assert g["Softmax"] == g["LayerNorm"] == g["Erf"] == {"Float32"}          # the rest: float32
    assert g["LogSoftmax"] == {"Float32"}                                      # the loss


def test_o2_keeps_layer_norm_softmax_and_loss_float32(graphs):
    g = graphs["O2"]
    assert g["MatMul"] == g["BatchMatMul"] == g["Erf"] == {"Float16"}
    assert g["LayerNorm"] == {"Float32"}
    assert g["Softmax"] == {"Float32"}                # MindSpore's own O2 computes it in float16
    assert g["LogSoftmax"] == {"Float32"}


def test_o3_is_float16_but_the_loss(graphs):
    g = graphs["O3"]
    assert g["MatMul"] == g["BatchMatMul"] == g["Softmax"] == g["LayerNorm"] == {"Float16"}
    assert g["LogSoftmax"] == {"Float32"}


def test_parameter_names_unchanged_by_amp():
    import mindspore as ms

    from ms_vit import create_model
    from ms_vit.models import amp
    ms.set_context(mode=ms.GRAPH_MODE)
    for level in ("O1", "O2", "O3"):
        net = create_model("vit_ti_16_224", num_classes=5, image_size=32, patch_size=8, depth=1, fused_kernels=False)
        names = [p.name for p in net.get_parameters()]
        amp.apply(net, level)
        assert [p.name for p in net.get_parameters()] == names


@pytest.mark.parametrize("level", ["O1", "O3"])
def test_level_trains(imagenet_sample, tmp_path, level):
    result = run_script("train.py", "--data_dir", imagenet_sample, "--ckpt_save_dir", str(tmp_path), "--batch_size",
                        "4", "--epoch_size", "1", "--amp_level", level, "--lr", "1e-3", *TINY_ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"AMP {level} float16" in result.stdout
    losses = [float(line.split(" loss ")[1].split()[0]) for line in result.stdout.splitlines()
              if line.startswith("epoch 1/1 step")]
    assert losses and all(0 < loss < 10 for loss in losses)


def test_bfloat16_refused_off_ascend_910b(imagenet_sample, tmp_path):
    from ms_vit.models import amp
    result = run_script("train.py", "--data_dir", imagenet_sample, "--ckpt_save_dir", str(tmp_path),
                        "--amp_level", "O2", "--amp_dtype", "bfloat16", *TINY_ARGS)
    assert_clean_error(result, "--amp_dtype bfloat16 trains on Ascend 910B and later", "not on CPU")
    assert not tmp_path.joinpath("config.yaml").exists()
    for soc in ("ascend910b", "ascend910_93", "ascend950"):                     # offered there: Atlas A2 and later
        amp.check("O2", "bfloat16", "Ascend", soc=soc)
    for soc in ("ascend910", "ascend310p", "ascend310b"):                       # 910A, 310P, 310B: no bfloat16
        with pytest.raises(ValueError, match=f"not on Ascend \\({soc}\\)"):
            amp.check("O2", "bfloat16", "Ascend", soc=soc)
    assert amp.loss_scale_manager("O2", "bfloat16") is None and amp.loss_scale_manager("O1") is not None
