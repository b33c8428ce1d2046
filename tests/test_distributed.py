"""Data-parallel training under msrun on CPU: 2 real worker processes (MindSpore's TCP collectives)."""
import json
import os
import shutil

import numpy as np
import pytest
from helpers import TINY_ARGS, assert_clean_error, run_msrun, run_script, worker_log

# No augmentation, no shuffling, no stochastic depth: the 2-worker run and the single process see the same images
# in the same order, so they must take the same steps.
FIXED = ["--lr", "1e-2", "--warmup_epochs", "0", "--drop_path_rate", "0", "--no_shuffle", "--no_augment", *TINY_ARGS]


def checkpoint_params(path):
    from ms_vit import checkpoint
    return checkpoint.read(path)[0]


@pytest.fixture(scope="module")
def runs(imagenet_sample, tmp_path_factory):
    """The 20 photos, 2 epochs: one process with batch 8, and msrun's 2 workers with batch 4 each; then the
    2-worker run resumed for a third epoch under msrun."""
    tmp = tmp_path_factory.mktemp("dist")
    data = ["--data_dir", imagenet_sample, "--epoch_size", "2", *FIXED]
    single = run_script("train.py", *data, "--batch_size", "8", "--ckpt_save_dir", str(tmp / "single"))
    assert single.returncode == 0, single.stderr[-3000:]
    logs = str(tmp / "logs")
    dist = run_msrun(["train.py", "--distribute", *data, "--batch_size", "4", "--ckpt_save_dir", str(tmp / "dist")],
                     logs)
    assert dist.returncode == 0, dist.stdout[-3000:] + dist.stderr[-3000:]
    resumed_logs = str(tmp / "resumed_logs")
    resumed = run_msrun(["train.py", "--distribute", "--data_dir", imagenet_sample, "--epoch_size", "3",
                         "--batch_size", "4", "--lr", "1e-2", "--no_shuffle", "--no_augment", "--resume",
                         str(tmp / "dist" / "vit-2_2.ckpt"), "--ckpt_save_dir", str(tmp / "dist")], resumed_logs)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return dict(tmp=tmp, single=single, dist=dist, logs=logs, resumed=resumed, resumed_logs=resumed_logs,
                data=imagenet_sample)


def assert_same_training(single, dist, start):
    """Two runs' checkpoints hold the same weights and Adam moments (to float rounding), and every weight moved."""
    from ms_vit.checkpoint import network_params
    weights = network_params(single)
    assert set(weights) == set(network_params(dist)) and len(weights) == 32
    assert min(np.abs(single[k] - start[k]).mean() for k in weights) > 5e-4          # every tensor moved
    # Adam's moments hold the (global-batch) gradients of both steps: equal to float rounding
    for k in weights:
        for moment in ("adam_m.", "adam_v."):
            assert np.abs(single[moment + k] - dist[moment + k]).max() <= 1e-5 * np.abs(single[moment + k]).max() \
                + 1e-9, moment + k
    # The weights too, except the key biases: their gradient is zero in exact arithmetic (softmax ignores a
    # constant added to all scores of a row), and Adam's m / sqrt(v) turns rounding noise of ~1e-12 into +-lr steps.
    for k in weights:
        a, b = single[k], dist[k]
        if k.endswith("qkv.bias"):
            dim = a.shape[0] // 3
            assert np.abs(single["adam_m." + k][dim:2 * dim]).max() < 1e-8
            a, b = np.delete(a, np.s_[dim:2 * dim]), np.delete(b, np.s_[dim:2 * dim])
        assert np.abs(a - b).max() < 5e-5, k         # Adam magnifies rounding where gradients are near zero


def test_two_workers_take_the_steps_of_one_process_with_the_global_batch(runs):
    from ms_vit.checkpoint import network_params
    single = checkpoint_params(str(runs["tmp"] / "single" / "vit-2_2.ckpt"))
    dist = checkpoint_params(str(runs["tmp"] / "dist" / "vit-2_2.ckpt"))
    start = network_params(checkpoint_params(str(runs["tmp"] / "single" / "vit-1_2.ckpt")))
    assert_same_training(single, dist, start)
    log = worker_log(runs["logs"], 0)
    assert "2 steps of 2 workers x 4 = global batch 8 per epoch" in log
    # the printed loss is the global batch's: the same as the single process's
    losses = lambda text: [line.split(" loss ")[1].split()[0] for line in text.splitlines()    # noqa: E731
                           if line.startswith("epoch ") and " loss " in line and "/" in line.split()[1]]
    assert losses(log) == losses(runs["single"].stdout) and len(losses(log)) == 4


def test_one_writer(runs):
    assert sorted(os.listdir(runs["tmp"] / "dist")) == [           # the 2 newest epoch checkpoints are kept
        ".lock", "best.ckpt", "config.yaml", "curves.png", "train_history.json", "val_history.json", "vit-2_2.ckpt",
        "vit-3_2.ckpt"]
    for logs in (runs["logs"], runs["resumed_logs"]):
        assert "training " in worker_log(logs, 0) and "best val top-1" in worker_log(logs, 0)
        assert worker_log(logs, 1).strip() == ""                         # rank 1 prints nothing, writes nothing


def test_validation_is_shared_and_summed(runs):
    single = json.load(open(runs["tmp"] / "single" / "val_history.json"))
    history = json.load(open(runs["tmp"] / "dist" / "val_history.json"))
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[-1]["num_images"] == 20   # continued on resume
    # the single process evaluated the same weights on all 20 images after each epoch
    for ours, theirs in zip(history[:2], single):
        assert ours["num_images"] == theirs["num_images"] == 20
        assert ours["top1"] == theirs["top1"] and ours["top5"] == theirs["top5"]
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)


def test_resume_under_msrun_matches_single_process_eval(runs, tmp_path):
    import mindspore as ms
    assert "epochs 3..3" in worker_log(runs["resumed_logs"], 0)
    last = str(runs["tmp"] / "dist" / "vit-3_2.ckpt")
    assert ms.load_checkpoint(last)["global_step"].asnumpy().item() == 6
    # every rank continued from the same weights: the summed validation of both ranks' shards equals eval.py on
    # rank 0's checkpoint
    out = tmp_path / "eval.json"
    result = run_script("eval.py", "--data_dir", runs["data"], "--ckpt_path", last, "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics, in_training = json.load(open(out)), json.load(open(runs["tmp"] / "dist" / "val_history.json"))[-1]
    assert metrics["num_images"] == in_training["num_images"] == 20
    assert metrics["top1"] == in_training["top1"] and metrics["top5"] == in_training["top5"]
    assert metrics["loss"] == pytest.approx(in_training["loss"], rel=1e-5)


def test_a_failing_worker_fails_the_launch_with_its_error(imagenet_sample, tmp_path):
    result = run_msrun(["train.py", "--distribute", "--data_dir", imagenet_sample, "--batch_size", "16",
                        "--ckpt_save_dir", str(tmp_path / "out"), *TINY_ARGS], str(tmp_path / "logs"))
    assert result.returncode != 0
    message = "20 training images make no full step of 2 workers x 16 = global batch 32"
    assert message in result.stdout + result.stderr                  # msrun shows the workers' output
    assert "error: " + message in worker_log(str(tmp_path / "logs"), 0)
    assert "Traceback" not in worker_log(str(tmp_path / "logs"), 0)
    assert not os.path.exists(tmp_path / "out")


def test_distribute_without_msrun_says_how_to_launch(imagenet_sample):
    result = run_script("train.py", "--distribute", "--data_dir", imagenet_sample, *TINY_ARGS)
    assert_clean_error(result, "--distribute", "msrun --worker_num=N --local_worker_num=N", "--join=True")


@pytest.fixture(scope="module")
def sixteen(imagenet_sample, tmp_path_factory):
    """The photos with 16 training images: 2 steps of 8, or 4 micro-steps of 2 workers x 2."""
    root = tmp_path_factory.mktemp("sixteen") / "data"
    shutil.copytree(imagenet_sample, root)
    files = sorted(str(p) for p in (root / "train").glob("*/*"))
    for path in files[16:]:
        os.remove(path)
    return str(root)


def test_accumulation_reduces_once_and_equals_the_global_batch(sixteen, tmp_path):
    """2 workers x 2 accumulated steps of batch 2 == one process with batch 8: gradients accumulate locally and are
    reduced over the ranks once per optimizer step; the schedule counts optimizer steps."""
    common = ["--data_dir", sixteen, "--epoch_size", "2", *FIXED]
    single = run_script("train.py", *common, "--batch_size", "8", "--ckpt_save_dir", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr[-3000:]
    dist = run_msrun(["train.py", "--distribute", *common, "--batch_size", "2", "--accumulation_steps", "2",
                      "--ckpt_save_dir", str(tmp_path / "dist")], str(tmp_path / "logs"))
    assert dist.returncode == 0, dist.stdout[-3000:] + dist.stderr[-3000:]
    assert "4 steps of 2 workers x 2 = global batch 4 per epoch" in worker_log(str(tmp_path / "logs"), 0)
    from ms_vit.checkpoint import network_params
    start = network_params(checkpoint_params(str(tmp_path / "single" / "vit-1_2.ckpt")))
    assert_same_training(checkpoint_params(str(tmp_path / "single" / "vit-2_2.ckpt")),
                         checkpoint_params(str(tmp_path / "dist" / "vit-2_4.ckpt")), start)


def test_ranks_draw_their_own_masks_from_the_same_weights_and_share_one_shuffle(imagenet_sample, tmp_path):
    """tests/distributed_probe.py under msrun, with train.py's setup: each rank its own dropout and stochastic-depth
    masks, the same (rank 0's) weights, disjoint shards of one shuffle; AdamW under MindSpore's parallel optimizer
    (each rank updating its share, then broadcasting) gives the weights of the unsharded AdamW on every rank."""
    result = run_msrun([os.path.join("tests", "distributed_probe.py"), str(tmp_path), imagenet_sample],
                       str(tmp_path / "logs"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    assert np.array_equal(ranks[0]["weights"], ranks[1]["weights"])
    assert np.abs(ranks[0]["masks"] - ranks[1]["masks"]).max() > 1e-2            # different masks, same input
    shards = [set(r["shard"].tolist()) for r in ranks]
    assert len(ranks[0]["shard"]) == len(ranks[1]["shard"]) == 10 and not shards[0] & shards[1]
    for r in ranks:
        assert np.array_equal(r["sharded"], r["plain"])
    assert np.array_equal(ranks[0]["sharded"], ranks[1]["sharded"])
