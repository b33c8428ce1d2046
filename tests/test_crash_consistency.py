"""Nothing a run reported is lost, however it is stopped: a process killed (SIGKILL) or signalled (SIGTERM) at every
file write of a 3-epoch run, then run again with ``--resume auto``, ends with every epoch it printed recorded once
with the figures printed, ``best.ckpt`` holding the best recorded epoch, the weights of a run never stopped, no
temporary file and the lock released.

The write points come from the process itself (``ms_vit.files.fault_point``): an uninterrupted run lists them
(``MS_VIT_WRITE_LOG``), then a chain of processes covers them in order: each process resumes the run and is stopped
at the first write point (just before, or just after, a write) not covered yet (``MS_VIT_FAULT_SKIP``), so each
process both checks the previous stop's resume and makes the next stop. A chain that completes the run without
reaching every point starts again in a fresh folder (the image check's memory too). Real processes, real files,
real signals.
"""
import concurrent.futures
import fcntl
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from helpers import TINY_ARGS, run_msrun, worker_log

# 16 training images in batches of 4: 4 steps an epoch; 4 validation images. Shuffled, not augmented, no stochastic
# depth: the run is a function of its seed, so a resumed run can be compared weight for weight with a straight one.
RUN = ["--batch_size", "4", "--log_interval", "1", "--no_augment", "--drop_path_rate", "0", "--lr", "1e-2",
       "--warmup_epochs", "1", *TINY_ARGS]
EPOCH_LINE = re.compile(r"^epoch (\d+): val top-1 (\S+) top-5 (\S+) loss (\S+)")
# The processes compute the same operations in the same order on the same machine; MindSpore's CPU kernels reduce
# in a fixed order for a fixed shape and thread count, so the resumed weights are expected bit for bit (measured:
# 0.0). The bound allows a reassociated float32 reduction in each of the 12 steps: an Adam step moves a weight by at
# most ~lr = 1e-2, and a reassociation changes a gradient by a relative ~n * 2^-24 (n <= 10^3 terms), which Adam's
# normalisation passes on at most linearly: 12 * 1e-2 * 1e3 * 6e-8 ~ 7e-6.
WEIGHT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def small_dataset(imagenet_sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("crash") / "data"
    photos = sorted(glob.glob(os.path.join(imagenet_sample, "train", "*", "*")))[:16]
    for split, chosen in (("train", photos), ("val", photos[::4])):
        for path in chosen:
            folder = root / split / os.path.basename(os.path.dirname(path))
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder)
    return str(root)


@pytest.fixture(scope="module")
def kernels_cache(tmp_path_factory):
    """A cache folder holding only the compiled fused kernels (a copy of the default cache's): each chain starts
    with an empty image-check memory, without compiling the kernels again."""
    from ms_vit.files import cache_root
    from ms_vit.models import kernels
    library = kernels.compiled_library()
    folder = tmp_path_factory.mktemp("cache")
    if library:
        shutil.copytree(os.path.join(cache_root(), "kernels"), folder / "kernels",
                        ignore=shutil.ignore_patterns(".lock"))
    return folder


def launch(data, out, cache, extra=(), env=None):
    """``train.py ... --resume auto`` to its end; returns (exit status, stdout, stderr)."""
    environment = dict(os.environ, PYTHONPATH=ROOT, MS_VIT_CACHE=str(cache), **(env or {}))
    result = subprocess.run([sys.executable, "train.py", "--data_dir", data, "--ckpt_save_dir", str(out), *RUN,
                             *extra, "--resume", "auto"], cwd=ROOT, env=environment, capture_output=True, text=True,
                            timeout=600)
    return result.returncode, result.stdout, result.stderr


def fresh_cache(kernels_cache, folder):
    shutil.copytree(kernels_cache, folder)
    return folder


def network_weights(path):
    from ms_vit.weights import checkpoint
    return checkpoint.network_params(checkpoint.read(str(path))[0])


def printed_epochs(stdout):
    return [tuple(match.groups()) for match in map(EPOCH_LINE.match, stdout.splitlines()) if match]


def straight_run(data, tmp, kernels_cache, extra):
    """The uninterrupted run: its write points in order, its records (validation, training) and its final
    weights."""
    log = tmp / "writes.log"
    code, out, err = launch(data, tmp / "straight", fresh_cache(kernels_cache, tmp / "straight_cache"), extra,
                            env=dict(MS_VIT_WRITE_LOG=str(log)))
    assert code == 0, err[-3000:]
    points = [line for line in log.read_text().splitlines() if not line.startswith("at ")]
    assert len(points) == len(set(points)), "write points must have unique labels"
    records = {name: json.loads((tmp / "straight" / f"{name}_history.json").read_text()) for name in ("val", "train")}
    last = sorted(glob.glob(str(tmp / "straight" / "vit-*.ckpt")))[-1]
    return points, records, os.path.basename(last), network_weights(last)


def check_finished_run(out, printed, straight_records, last, straight_weights):
    """The invariants of a run that completed after any number of stops."""
    assert (out / "val_history.json").is_file(), "no records at all"
    records = json.loads((out / "val_history.json").read_text())
    epochs = [r["epoch"] for r in straight_records["val"]]
    assert [r["epoch"] for r in records] == epochs
    for record, reference in zip(records, straight_records["val"]):
        figures = (f"{record['top1']:.4f}", f"{record['top5']:.4f}", f"{record['loss']:.4f}")
        assert printed.get(record["epoch"], {figures}) == {figures}, (record, printed)     # as printed, every time
        assert (record["top1"], record["top5"]) == (reference["top1"], reference["top5"])
        assert record["loss"] == pytest.approx(reference["loss"], abs=1e-5)
    assert set(printed) <= set(epochs)
    steps = [h["step"] for h in json.loads((out / "train_history.json").read_text())]
    assert steps == [h["step"] for h in straight_records["train"]]
    best = max(records, key=lambda r: r["top1"])
    from ms_vit.weights import checkpoint
    assert checkpoint.read(str(out / "best.ckpt"))[1]["epoch"] == best["epoch"]
    weights = network_weights(out / last)
    assert max(float(np.abs(weights[k] - straight_weights[k]).max()) for k in weights) <= WEIGHT_TOLERANCE
    assert not glob.glob(str(out / "*.tmp")) + glob.glob(str(out / ".*.tmp*"))
    with open(out / ".lock") as lock:                          # released: this process can take it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def sweep(action, data, tmp, kernels_cache, extra=()):
    """Stop a chain of processes at every write point of the run (see the module docstring); returns what it did."""
    points, straight_records, last, straight_weights = straight_run(data, tmp, kernels_cache, extra)
    covered, hit = tmp / "covered", tmp / "hit"
    covered.write_text("")
    chains = processes = 0
    signalled = 128 + signal.SIGTERM if action == "term" else -signal.SIGKILL
    while set(points) - set(covered.read_text().splitlines()):
        chains += 1
        out = tmp / f"run{chains}"
        cache = fresh_cache(kernels_cache, tmp / f"cache{chains}")
        printed, stops = {}, []
        reached_any = False
        while True:
            processes += 1
            hit.write_text("")
            code, stdout, stderr = launch(data, out, cache, extra, env=dict(
                MS_VIT_FAULT=action, MS_VIT_FAULT_SKIP=str(covered), MS_VIT_FAULT_HIT=str(hit)))
            assert "Traceback" not in stderr, stderr[-3000:]
            for epoch, *figures in printed_epochs(stdout):
                printed.setdefault(int(epoch), set()).add(tuple(figures))
            stop = hit.read_text().splitlines()
            if stop:
                reached_any = True
                stops.append(stop[0])
                with open(covered, "a") as f:
                    f.write(stop[0] + "\n")
            if code == 0:
                break
            assert stop and code == signalled, (action, code, stop, stderr[-3000:])
        assert reached_any, f"write points no run reaches: {sorted(set(points) - set(covered.read_text().split()))}"
        try:
            check_finished_run(out, printed, straight_records, last, straight_weights)
        except AssertionError as exc:
            raise AssertionError(f"{action} {' '.join(extra)}: chain {chains} ended wrong after stops at "
                                 f"{stops}: {exc}") from None
    return dict(points=len(points), processes=processes, chains=chains)


# SIGKILL over 3 epochs (two checkpoints kept: the oldest removed at the third); SIGTERM, and SIGKILL under sinks of 2
# steps (the device cadence replayed), over 2 epochs with one checkpoint kept, the same kinds of write in fewer points
SWEEPS = {"kill": ("kill", ("--epoch_size", "3", "--keep_checkpoint_max", "2")),
          "term": ("term", ("--epoch_size", "2", "--keep_checkpoint_max", "1")),
          "kill, sinks of 2 steps": ("kill", ("--epoch_size", "2", "--keep_checkpoint_max", "1", "--sink_size", "2"))}


def test_a_stop_at_any_write_point_loses_nothing(small_dataset, kernels_cache, tmp_path):
    """The three sweeps, two at a time (each is a chain of processes; the machine has two cores)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(sweep, action, small_dataset, tmp_path / name.replace(" ", "_").replace(",", ""),
                                     kernels_cache, extra)
                   for name, (action, extra) in SWEEPS.items()}
        results = {name: future.result() for name, future in futures.items()}
    print(results)
    for name, result in results.items():
        assert result["points"] >= 26, (name, result)        # startup (probe, lock, image check, config) + epochs


def test_msrun_workers_killed_mid_epoch_and_in_the_evaluation_resume_to_the_same_run(small_dataset, kernels_cache,
                                                                                    tmp_path):
    """Under msrun with 2 workers: rank 1 SIGKILLed in the middle of epoch 2, then, in the resumed run, rank 0 as epoch
    2's evaluation starts; msrun ends each time, and the same msrun command with ``--resume auto`` finishes with the
    records and the weights of a run never stopped."""
    def launch(out, name, fault=None, rank=None):
        env = dict(MS_VIT_CACHE=str(fresh_cache(kernels_cache, tmp_path / f"cache_{name}")))
        if fault:
            env.update(MS_VIT_FAULT="kill", MS_VIT_FAULT_RANK=str(rank), MS_VIT_FAULT_AT=fault)
        return run_msrun(["train.py", "--distribute", "--data_dir", small_dataset, "--ckpt_save_dir", str(out), *RUN,
                          "--epoch_size", "2", "--batch_size", "2", "--resume", "auto"], str(tmp_path / f"logs_{name}"),
                         timeout=600, env=env)

    straight = launch(tmp_path / "straight", "straight")
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    out = tmp_path / "stopped"
    first = launch(out, "first", fault="at step@step 6", rank=1)     # 4 steps an epoch: mid-epoch 2
    assert first.returncode != 0 and "epoch 1: val top-1" in worker_log(str(tmp_path / "logs_first"), 0)
    assert sorted(os.listdir(out)) == sorted([".lock", "best.ckpt", "config.yaml", "curves.png", "train_history.json",
                                             "val_history.json", "vit-1_4.ckpt"])
    # epoch 2 trained again; rank 0, the writer, killed as its evaluation starts (after its epoch checkpoint)
    second = launch(out, "second", fault="at evaluate@step 8", rank=0)
    assert second.returncode != 0
    assert f"resuming from {out / 'vit-1_4.ckpt'}" in worker_log(str(tmp_path / "logs_second"), 0)
    assert os.path.isfile(out / "vit-2_4.ckpt")
    assert [r["epoch"] for r in json.loads((out / "val_history.json").read_text())] == [1]
    third = launch(out, "third")
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    log = worker_log(str(tmp_path / "logs_third"), 0)
    assert f"resuming from {out / 'vit-2_4.ckpt'}" in log and "epoch 2: val top-1" in log   # evaluated on resume
    reference = tmp_path / "straight"
    records = {name: json.loads((reference / f"{name}_history.json").read_text()) for name in ("val", "train")}
    printed = {}
    for name in ("first", "second", "third"):
        for epoch, *figures in printed_epochs(worker_log(str(tmp_path / f"logs_{name}"), 0)):
            printed.setdefault(int(epoch), set()).add(tuple(figures))
    check_finished_run(out, printed, records, "vit-2_4.ckpt", network_weights(reference / "vit-2_4.ckpt"))
