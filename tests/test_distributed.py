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
    from ms_vit.weights import checkpoint
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


# Float32 error bounds of the comparisons (eps = 2^-23, float32's machine epsilon). The two runs compute the same
# function of the same data with their sums associated differently (one batch of 8 against two of 4 reduced by an
# AllReduce; other matrix shapes, so other kernel blockings). A sum of n float32 terms computed in two orders differs
# by at most gamma_n * sum|terms|, gamma_n = n * eps / (1 - n * eps) (Higham, Accuracy and Stability, 3.1).
# * a gradient element is a sum over the R = 8 images x 17 tokens = 136 rows of the global batch, and its rounding
#   error passes through the D = 28 chained matrix products between the loss and the first layer (14 forward:
#   patch projection, 6 per block x 2 blocks, head; as many backward), each adding at most gamma_R relative to the
#   magnitudes flowing through it. The terms of one parameter tensor are at most of the size of its largest
#   gradient, so |delta g| <= D * gamma_R * max|g| per tensor, and Adam's first moment, a convex combination of the
#   gradients, inherits the bound: |delta m| <= D * gamma_R * max|m|; the second moment, quadratic in g, twice that.
# * Adam divides each step by sqrt(v): an element's step lr * m / sqrt(v) changes by (3/2) of the gradient's
#   relative error there, |delta g| / sqrt(v_e) <= D * gamma_R * sqrt(max v / v_e) (v_e the element's own mean square
#   gradient), over T steps; no step moves a weight more than ~lr, so the bound is capped at 2 * T * lr. Elements with
#   a gradient that is zero in exact arithmetic (the key biases: softmax ignores a constant added to a row's scores)
#   have v_e ~ 0: any rounding noise becomes a +-lr step there, which the cap allows.
# * an evaluation loss is a mean of per-image cross-entropies from logits computed through the 14 forward products
#   (reductions of K <= 192 terms): relative error <= 14 * gamma_192 + gamma_20 (the mean over 20 images).
EPS = 2.0 ** -23
ROWS, PRODUCTS, STEPS, LR = 8 * 17, 28, 4, 1e-2


def gamma(n: int) -> float:
    return n * EPS / (1 - n * EPS)


GRADIENT_ERROR = PRODUCTS * gamma(ROWS)                  # relative to a tensor's largest gradient: 4.5e-4
EVAL_LOSS_ERROR = 14 * gamma(192) + gamma(20)            # relative: 3.2e-4


def assert_same_training(single, dist, start):
    """Two runs' checkpoints hold the same weights and Adam moments (to the float32 bounds above), and every weight
    moved."""
    from ms_vit.weights.checkpoint import network_params
    weights = network_params(single)
    assert set(weights) == set(network_params(dist)) and len(weights) == 32
    assert min(np.abs(single[k] - start[k]).mean() for k in weights) > 5e-4          # every tensor moved
    for k in weights:
        m, v = single["adam_m." + k], single["adam_v." + k]
        assert np.abs(m - dist["adam_m." + k]).max() <= GRADIENT_ERROR * np.abs(m).max(), k
        assert np.abs(v - dist["adam_v." + k]).max() <= 2 * GRADIENT_ERROR * v.max(), k
        relative_gradient_error = GRADIENT_ERROR * np.sqrt(v.max() / np.maximum(v, 1e-45))
        bound = np.minimum(1.5 * STEPS * LR * relative_gradient_error, 2 * STEPS * LR)
        assert (np.abs(single[k] - dist[k]) <= bound).all(), k


def test_two_workers_take_the_steps_of_one_process_with_the_global_batch(runs):
    from ms_vit.weights.checkpoint import network_params
    single = checkpoint_params(str(runs["tmp"] / "single" / "vit-2_2.ckpt"))
    dist = checkpoint_params(str(runs["tmp"] / "dist" / "vit-2_2.ckpt"))
    start = network_params(checkpoint_params(str(runs["tmp"] / "single" / "vit-1_2.ckpt")))
    assert_same_training(single, dist, start)
    log = worker_log(runs["logs"], 0)
    assert "2 steps of 2 workers x 4 = global batch 8 per epoch" in log
    # the printed loss is the global batch's: the single process's, to the bounds above (the loss's rounding, the
    # weights' differences' first-order effect) and the printing's rounding to 4 decimals
    losses = lambda text: [float(line.split(" loss ")[1].split()[0]) for line in text.splitlines()    # noqa: E731
                           if line.startswith("epoch ") and " loss " in line and "/" in line.split()[1]]
    moved = weight_effect(runs["tmp"] / "single" / "vit-2_2.ckpt", runs["tmp"] / "dist" / "vit-2_2.ckpt")
    ours, theirs = losses(log), losses(runs["single"].stdout)
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        assert abs(a - b) <= EVAL_LOSS_ERROR * b + moved + 1e-4, (ours, theirs)


def test_one_writer(runs):
    assert sorted(os.listdir(runs["tmp"] / "dist")) == [           # the 2 newest epoch checkpoints are kept
        ".lock", "best.ckpt", "config.yaml", "curves.png", "train_history.json", "val_history.json", "vit-2_2.ckpt",
        "vit-3_2.ckpt"]
    for logs in (runs["logs"], runs["resumed_logs"]):
        assert "training " in worker_log(logs, 0) and "best val top-1" in worker_log(logs, 0)
        assert worker_log(logs, 1).strip() == ""                         # rank 1 prints nothing, writes nothing


def weight_effect(path_a, path_b) -> float:
    """sum over weights of sqrt(v_hat) |delta w|: the first-order change of the loss between two checkpoints' weights,
    the training gradient's RMS per element (Adam's bias-corrected second moment) standing for the gradient."""
    from ms_vit.weights.checkpoint import network_params
    a, b = checkpoint_params(str(path_a)), checkpoint_params(str(path_b))
    steps = int(np.asarray(a["global_step"]).reshape(-1)[0]) if "global_step" in a else STEPS
    correction = 1 - 0.999 ** max(steps, 1)
    return float(sum((np.sqrt(a["adam_v." + k] / correction) * np.abs(a[k] - b[k])).sum() for k in network_params(a)))


def test_validation_is_shared_and_summed(runs):
    single = json.load(open(runs["tmp"] / "single" / "val_history.json"))
    history = json.load(open(runs["tmp"] / "dist" / "val_history.json"))
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[-1]["num_images"] == 20   # continued on resume
    # the single process evaluated its weights (the 2-worker run's, to the bounds above) on all 20 images
    moved = weight_effect(runs["tmp"] / "single" / "vit-2_2.ckpt", runs["tmp"] / "dist" / "vit-2_2.ckpt")
    for ours, theirs in zip(history[:2], single):
        assert ours["num_images"] == theirs["num_images"] == 20
        assert ours["top1"] == theirs["top1"] and ours["top5"] == theirs["top5"]
        # the weights differ within the bounds above: first order, the loss moves by sum |dL/dw| |delta w|, with the
        # training gradient's RMS sqrt(v) (Adam's second moment, bias-corrected) standing for dL/dw; the weights after
        # epoch 2 (epoch 1's 2-worker checkpoint is no longer kept), whose rounding differences have had longer to grow
        assert abs(ours["loss"] - theirs["loss"]) <= EVAL_LOSS_ERROR * theirs["loss"] + moved


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
    assert abs(metrics["loss"] - in_training["loss"]) <= EVAL_LOSS_ERROR * metrics["loss"]    # the same weights


@pytest.mark.parametrize("case", ["every rank knows", "rank 0 knows"])
def test_a_failing_worker_fails_the_launch_with_its_error_first(imagenet_sample, tmp_path, case):
    """A mistake under msrun: each worker's one error line comes first in msrun's output, before msrun's own report;
    no worker's log and not the scheduler's (which runs train.py too) holds a traceback."""
    if case == "every rank knows":               # too few images for a step: every rank finds it
        args, message = (["--data_dir", imagenet_sample, "--batch_size", "16"],
                         "20 training images make no full step of 2 workers x 16 = global batch 32")
    else:                                        # no val/: rank 0 checks the data, the others learn its verdict
        data = tmp_path / "no_val"
        shutil.copytree(os.path.join(imagenet_sample, "train"), data / "train")
        args, message = ["--data_dir", str(data)], f"split folder not found: {data / 'val'}"
    logs = str(tmp_path / "logs")
    result = run_msrun(["train.py", "--distribute", *args, "--ckpt_save_dir", str(tmp_path / "out"), *TINY_ARGS], logs)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    traceback = output.find("Traceback")                            # msrun's own, if any: after the worker's line
    assert f"error: {message}" in output and (traceback == -1 or output.index(f"error: {message}") < traceback)
    assert "error: " + message in worker_log(logs, 0)
    for rank in (0, 1):
        assert "Traceback" not in worker_log(logs, rank)
    with open(os.path.join(logs, "scheduler.log")) as f:
        scheduler = f.read()
    assert "Traceback" not in scheduler
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
    from ms_vit.weights.checkpoint import network_params
    start = network_params(checkpoint_params(str(tmp_path / "single" / "vit-1_2.ckpt")))
    assert_same_training(checkpoint_params(str(tmp_path / "single" / "vit-2_2.ckpt")),
                         checkpoint_params(str(tmp_path / "dist" / "vit-2_4.ckpt")), start)


def test_ranks_draw_their_own_masks_and_augmentations_from_one_shuffle(imagenet_sample, tmp_path):
    """tests/distributed_probe.py under msrun, with train.py's setup and pipeline: each rank its own dropout and
    stochastic-depth masks from the same (rank 0's) weights; disjoint shards of one shuffle, reshuffled each epoch;
    with repeated augmentation the two copies of an image, at the same position on the two ranks, augmented
    differently (with one pipeline seed for all ranks they were byte-identical)."""
    result = run_msrun([os.path.join("tests", "distributed_probe.py"), str(tmp_path), imagenet_sample],
                       str(tmp_path / "logs"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    assert np.array_equal(ranks[0]["weights"], ranks[1]["weights"])
    assert np.abs(ranks[0]["masks"] - ranks[1]["masks"]).max() > 1e-2            # different masks, same input
    plain = [r["plain_ids"] for r in ranks]                                      # (epochs, 10) image sums per rank
    for epoch in range(2):
        shards = [set(ids[epoch].tolist()) for ids in plain]
        assert len(shards[0]) == len(shards[1]) == 10 and not shards[0] & shards[1]     # 20 photos, disjoint
    assert not np.array_equal(plain[0][0], plain[0][1])                          # a new shuffle each epoch
    repeat = [r["repeat_ids"] for r in ranks]
    assert np.array_equal(repeat[0], repeat[1])                  # both copies of an image at the same position
    assert all(len(set(ids.tolist())) == 10 for ids in repeat[0])                # 10 different photos an epoch
    assert not np.array_equal(repeat[0][0], repeat[0][1])
    for recipe in ("repeat_crops", "repeat_deit"):
        copies = [r[recipe].reshape(20, -1) for r in ranks]                      # 2 epochs x 10 positions
        identical = [i for i in range(20) if np.array_equal(copies[0][i], copies[1][i])]
        assert identical == [], (recipe, identical)
