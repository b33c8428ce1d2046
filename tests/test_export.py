"""export.py: MINDIR and ONNX files that give the checkpoint's logits, with their preprocessing and classes."""
import json
import os

import mindspore as ms
import numpy as np
import pytest
from bounds import assert_within, parameters, vit_forward
from helpers import assert_clean_error, run_script

PREDICT_MINDIR = """
import sys, numpy as np, mindspore as ms
from mindspore import nn
ms.set_device("CPU")
net = nn.GraphCell(ms.load(sys.argv[1]))
np.save(sys.argv[3], net(ms.Tensor(np.load(sys.argv[2]))).asnumpy())
"""


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    """A tiny ViT with non-trivial weights (random head too) saved as train.py saves, with class names."""
    from ms_vit import create_model
    from ms_vit.weights import checkpoint
    net = create_model("vit_ti_16_224", num_classes=5, image_size=32, patch_size=8, embed_dim=48, depth=2,
                       num_heads=3, mlp_dim=96)
    rng = np.random.default_rng(0)
    for p in net.get_parameters():
        p.set_data(ms.Tensor((rng.standard_normal(p.shape) * 0.5).astype(np.float32)))
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")
    checkpoint.save(net, path, meta={"class_names": ["ant", "bee", "cat", "dog", "eel"], "classes": list("abcde")})
    return path


def images(n=3):
    return np.random.default_rng(1).standard_normal((n, 3, 32, 32)).astype(np.float32)


def reference_logits(ckpt, x):
    """The checkpoint's logits (on the fused CPU kernels) and the bound on their difference from another float32
    evaluation of the same network (an export: MindSpore's operators, ONNX Runtime): twice ``vit_forward``'s."""
    from ms_vit import create_model
    net = create_model(checkpoint_path=ckpt)
    net.set_train(False)
    return net(ms.Tensor(x)).asnumpy(), 2 * vit_forward(net.config, parameters(net), x)[1]


def test_mindir_takes_any_batch_in_a_fresh_process_with_the_same_logits(trained_ckpt, tmp_path):
    result = run_script("export.py", "--ckpt_path", trained_ckpt, "--file_format", "MINDIR", "--output",
                        str(tmp_path / "tiny"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MINDIR: " in result.stdout and "any batch size" in result.stdout and (tmp_path / "tiny.mindir").exists()
    info = json.load(open(tmp_path / "tiny.mindir.json"))
    assert info["input"]["shape"] == ["batch", 3, 32, 32] and info["class_names"][2] == "cat"
    assert info["preprocess"]["center_crop"] == 32 and info["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    assert b"ms_vit_kernels" not in (tmp_path / "tiny.mindir").read_bytes()      # no machine-bound custom ops
    (tmp_path / "predict.py").write_text(PREDICT_MINDIR)
    for batch in (1, 3, 8):                                                       # one file, any batch
        x = images(batch)
        np.save(tmp_path / "x.npy", x)
        run = run_script(str(tmp_path / "predict.py"), str(tmp_path / "tiny.mindir"), str(tmp_path / "x.npy"),
                         str(tmp_path / "y.npy"))
        assert run.returncode == 0, run.stderr[-3000:]
        expected, bound = reference_logits(trained_ckpt, x)
        assert np.abs(expected).max() > 1
        assert_within(np.load(tmp_path / "y.npy"), expected, bound, f"MINDIR's logits, batch {batch}")


def test_mindir_with_a_fixed_batch(trained_ckpt, tmp_path):
    result = run_script("export.py", "--ckpt_path", trained_ckpt, "--batch_size", "3", "--output",
                        str(tmp_path / "three"))
    assert result.returncode == 0 and "batch 3" in result.stdout, result.stderr[-3000:]
    assert json.load(open(tmp_path / "three.mindir.json"))["input"]["shape"] == [3, 3, 32, 32]


def test_onnx_takes_any_batch_passes_the_checker_and_gives_the_logits(trained_ckpt, tmp_path):
    import onnx
    import onnxruntime
    result = run_script("export.py", "--ckpt_path", trained_ckpt, "--file_format", "onnx", "--output",
                        str(tmp_path / "tiny"))
    assert result.returncode == 0, result.stderr[-3000:]
    model = onnx.load(str(tmp_path / "tiny.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    ops = {node.op_type for node in model.graph.node}
    assert {"LayerNormalization", "Erf"} <= ops and "Gemm" not in ops               # the graph onnxruntime fuses
    assert json.load(open(tmp_path / "tiny.onnx.json"))["input"]["shape"] == ["batch", 3, 32, 32]
    session = onnxruntime.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 8):
        x = images(batch)
        logits = session.run(["logits"], {"images": x})[0]
        assert logits.shape == (batch, 5)
        assert_within(logits, *reference_logits(trained_ckpt, x), f"ONNX logits, batch {batch}")


@pytest.mark.parametrize("options", [dict(distilled=True), dict(no_embed_class=True, layer_scale_init=0.3),
                                     dict(global_pool="mean"), dict(gelu_approximate=True, layer_norm_eps=1e-7)])
def test_onnx_graph_of_every_model_option(options, tmp_path):
    """DeiT's distillation token and head, DeiT III's LayerScale and class-slot-free position embedding, mean
    pooling, MindSpore's numerics: the ONNX graph computes what the ViT does."""
    import onnxruntime

    from ms_vit import create_model
    from ms_vit.deploy import onnx_export
    net = create_model("vit_ti_16_224", num_classes=7, image_size=32, patch_size=8, embed_dim=64, depth=2,
                       num_heads=2, mlp_dim=128, fused_kernels=False, **options)
    rng = np.random.default_rng(2)
    for p in net.get_parameters():
        p.set_data(ms.Tensor((p.asnumpy() + rng.standard_normal(p.shape) * 0.2).astype(np.float32)))
    net.set_train(False)
    onnx_export.export(net, str(tmp_path / "m.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    bound = 2 * vit_forward(net.config, parameters(net), x)[1]            # ONNX Runtime's float32 and MindSpore's
    assert_within(session.run(None, {"images": x})[0], net(ms.Tensor(x)).asnumpy(), bound, f"ONNX logits {options}")


def test_infer_runs_an_exported_mindir(trained_ckpt, imagenet_sample, tmp_path):
    import glob

    from ms_vit import create_model, data
    run = run_script("export.py", "--ckpt_path", trained_ckpt, "--output", str(tmp_path / "tiny"))
    assert run.returncode == 0, run.stderr[-3000:]
    image = sorted(glob.glob(os.path.join(imagenet_sample, "infer", "*", "*.jpg")))[0]
    outputs = {}
    for name, model in (("ckpt", trained_ckpt), ("mindir", str(tmp_path / "tiny.mindir"))):
        result = run_script("infer.py", "--ckpt_path", model, image, "--output_dir", str(tmp_path / name))
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[name] = result.stdout.splitlines()[1:6]
    assert outputs["ckpt"] == outputs["mindir"]                   # same classes, same probabilities to 4 digits
    net = create_model(checkpoint_path=trained_ckpt)
    net.set_train(False)
    top = ["ant", "bee", "cat", "dog", "eel"][int(net(data.load_image(image, net.config)).asnumpy().argmax())]
    assert outputs["mindir"][0].startswith(f"  1. {top}  ")


def test_bad_inputs_give_one_clear_line(trained_ckpt, tmp_path):
    assert_clean_error(run_script("export.py", "--ckpt_path", trained_ckpt, "--file_format", "TFLITE"),
                       "unknown --file_format TFLITE", "MINDIR, ONNX, AIR")
    not_vit = tmp_path / "not_vit.ckpt"
    ms.save_checkpoint([{"name": "conv.weight", "data": ms.Tensor(np.zeros((4, 3, 3, 3), np.float32))}],
                       str(not_vit))
    assert_clean_error(run_script("export.py", "--ckpt_path", str(not_vit)), "not a ViT checkpoint")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_clean_error(run_script("export.py", "--ckpt_path", trained_ckpt, "--output", str(blocker / "out" / "m")),
                       f"cannot write --output {blocker / 'out' / 'm'}.mindir")
    assert_clean_error(run_script("export.py", "--ckpt_path", trained_ckpt, "--file_format", "AIR"),
                       "AIR files are written on Ascend only")
    assert_clean_error(run_script("infer.py", "--ckpt_path", str(tmp_path / "none.mindir"), str(blocker)),
                       "model not found")


def test_infer_refuses_a_mindir_that_loads_code(trained_ckpt, imagenet_sample, tmp_path):
    """A MINDIR holding Custom/AOT nodes (exported here from the model on ms_vit's fused CPU kernels) names a shared
    library that ``mindspore.load`` + ``GraphCell`` would dlopen: refused before it is loaded. export.py's own
    MINDIR (MindSpore's operators only) is accepted; a file that is not a MINDIR is named."""
    import glob
    import shutil

    from ms_vit import create_model
    from ms_vit.deploy import mindir
    run = run_script("export.py", "--ckpt_path", trained_ckpt, "--output", str(tmp_path / "plain"))
    assert run.returncode == 0, run.stderr[-3000:]
    mindir.check_no_code(str(tmp_path / "plain.mindir"))
    assert "Custom" not in mindir.operator_counts(str(tmp_path / "plain.mindir"))
    net = create_model(checkpoint_path=trained_ckpt, fused_kernels=True)
    assert net.fused_kernels
    net.set_train(False)
    ms.export(net, ms.Tensor(images(1)), file_name=str(tmp_path / "fused"), file_format="MINDIR")
    assert mindir.operator_counts(str(tmp_path / "fused.mindir"))["Custom"] >= 5
    image = sorted(glob.glob(os.path.join(imagenet_sample, "infer", "*", "*.jpg")))[0]
    not_mindir = tmp_path / "junk.mindir"
    not_mindir.write_bytes(b"\xff" * 64)
    for model, expected in ((tmp_path / "fused.mindir", "holds operators that load or run code named in the file "
                             "(Custom ("), (not_mindir, "is not a MINDIR file")):
        shutil.copy(tmp_path / "plain.mindir.json", str(model) + ".json")
        assert_clean_error(run_script("infer.py", "--ckpt_path", str(model), image, "--output_dir",
                                      str(tmp_path / "out")), str(model), expected)
