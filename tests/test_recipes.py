"""configs/*.yaml and train.py --config: every recipe is valid, the DeiT recipes train, the command line wins."""
import glob
import json
import os

import pytest
import yaml
from conftest import ROOT
from helpers import TINY_ARGS, assert_clean_error, run_script

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def test_every_recipe_is_valid_for_train_py():
    import train
    from ms_vit.config import read_config
    names = {os.path.basename(c) for c in CONFIGS}
    assert {"demo.yaml", "deit_tiny_224.yaml", "deit_small_224.yaml", "deit_base_224.yaml",
            "vit_b_16_224_finetune_tutorial.yaml", "vit_b_16_384_finetune.yaml"} <= names
    for path in CONFIGS:
        read_config(path, train.build_parser())                 # raises on unknown keys or bad choices


@pytest.mark.parametrize("recipe", ["deit_tiny_224", "deit_small_224", "deit_base_224"])
def test_deit_recipe_trains_two_real_steps(recipe, imagenet_sample, tmp_path):
    """The full DeiT recipe (RandAugment, erasing, Mixup/CutMix, repeated augmentation, EMA, scaled lr) on the 20
    photos at 32 px: 2 steps of 8, evaluated, EMA saved."""
    result = run_script("train.py", "--config", os.path.join(ROOT, "configs", f"{recipe}.yaml"), "--data_dir",
                        imagenet_sample, "--image_size", "32", "--depth", "1", "--epoch_size", "1", "--batch_size",
                        "8", "--ckpt_save_dir", str(tmp_path), "--num_workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 steps of batch 8 per epoch" in result.stdout
    assert "learning rate 0.0005 x global batch 8 / 512 = 7.8125e-06 (linear scaling)" in result.stdout
    history = json.load(open(tmp_path / "val_history.json"))
    assert history[0]["num_images"] == 20 and "ema_top1" in history[0]
    saved = yaml.safe_load(open(tmp_path / "config.yaml"))
    assert saved["auto_augment"] == "rand-m9-mstd0.5-inc1" and saved["mixup"] == 0.8 and saved["aug_repeats"] == 3
    assert saved["image_size"] == 32 and saved["epoch_size"] == 1           # the command line won
    from ms_vit.weights import checkpoint
    params, meta = checkpoint.read(str(tmp_path / "best.ckpt"))
    assert meta["train_config"]["ema_decay"] == 0.99996 and any(k.startswith("ema.") for k in params)
    eval_ema = run_script("eval.py", "--data_dir", imagenet_sample, "--ckpt_path", str(tmp_path / "best.ckpt"),
                          "--use_ema", "--output", str(tmp_path / "ema.json"))
    assert eval_ema.returncode == 0, eval_ema.stderr[-3000:]
    # the EMA weights' hits on the same 20 images, counted in training and by eval.py: k / 20 (rel 1e-6 is 17 U)
    assert json.load(open(tmp_path / "ema.json"))["top1"] == pytest.approx(history[0]["ema_top1"])


def test_bad_recipes_give_one_clear_line(imagenet_sample, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.1\nlearning_rate: 0.2\n")
    assert_clean_error(run_script("train.py", "--config", str(bad), "--data_dir", imagenet_sample),
                       "unknown key(s) learning_rate", "valid keys:", "lr_base_size")
    bad.write_text("optimizer: sgd\n")
    assert_clean_error(run_script("train.py", "--config", str(bad), "--data_dir", imagenet_sample),
                       "optimizer must be one of adamw, adam")
    bad.write_text("- a list\n")
    assert_clean_error(run_script("train.py", "--config", str(bad), "--data_dir", imagenet_sample), "mapping")
    assert_clean_error(run_script("train.py", "--config", str(tmp_path / "none.yaml")), "cannot read config")
    assert_clean_error(run_script("train.py", *TINY_ARGS), "--data_dir is required")
    eval_no_ema = run_script("eval.py", "--data_dir", imagenet_sample, "--ckpt_path", str(tmp_path / "x.ckpt"))
    assert eval_no_ema.returncode == 2


def test_help_lists_every_option():
    result = run_script("train.py", "--help")
    for option in ("--config", "--auto_augment", "--re_prob", "--mixup", "--cutmix", "--aug_repeats", "--ema_decay",
                   "--clip_grad", "--accumulation_steps", "--layer_decay", "--lr_base_size", "--weight_init"):
        assert option in result.stdout, option


def test_ema_is_resumed_not_restarted(imagenet_sample, tmp_path):
    """With a decay of 1 - 1e-6 the average stays at the first weights; a resumed run that restarted it from the
    trained weights would move it by the whole first epoch's training."""
    from ms_vit.weights import checkpoint
    common = ["--data_dir", imagenet_sample, "--batch_size", "8", "--lr", "1e-2", "--warmup_epochs", "0",
              "--ema_decay", "0.999999", "--ckpt_save_dir", str(tmp_path), *TINY_ARGS]
    first = run_script("train.py", *common, "--epoch_size", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    epoch1 = glob.glob(str(tmp_path / "vit-1_*.ckpt"))[0]
    resumed = run_script("train.py", *common, "--epoch_size", "2", "--resume", epoch1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    before, _ = checkpoint.read(epoch1)
    after, _ = checkpoint.read(glob.glob(str(tmp_path / "vit-2_*.ckpt"))[0])
    names = [k for k in before if k.startswith("ema.")]
    assert len(names) == 32
    moved = max(abs(before[k[4:]] - before[k]).max() for k in names)          # epoch 1's training
    assert moved > 1e-3
    assert max(abs(after[k] - before[k]).max() for k in names) < moved / 100    # 2 steps of 1e-6 x |w - ema|
