"""Faults a long training run meets, each made for real: signals sent to a running train.py, a non-finite loss,
bad image files, a full disk (a file-size limit), a folder in use, damaged checkpoints."""
import concurrent.futures
import glob
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import crafted_ckpt
import numpy as np
import pytest
from conftest import ROOT
from helpers import TINY_ARGS, assert_clean_error, run_script
from PIL import Image

# 20 photos, batch 4: 5 steps per epoch; shuffled, not augmented, no stochastic depth: the run is a function of the
# seed, so a resumed run can be compared weight for weight with a straight one
RUN = ["--batch_size", "4", "--log_interval", "1", "--no_augment", "--drop_path_rate", "0", "--lr", "1e-2",
       "--warmup_epochs", "1", *TINY_ARGS]


def train(data, out, *args, **kwargs):
    return run_script("train.py", "--data_dir", data, "--ckpt_save_dir", str(out), *RUN, *args, **kwargs)


def start_train(data, out, *args, preexec_fn=None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "train.py", "--data_dir", data, "--ckpt_save_dir", str(out), *RUN, *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec_fn)


def signal_at(process, line_start: str, sig) -> str:
    """Send ``sig`` once the run prints a line starting with ``line_start``; returns what it printed by then."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(line_start):
            process.send_signal(sig)
            break
    rest, err = process.communicate(timeout=300)
    return "".join(seen) + rest, err


def read(path):
    from ms_vit.weights import checkpoint
    return checkpoint.read(str(path))


def weights(path):
    from ms_vit.weights.checkpoint import network_params
    return network_params(read(path)[0])


def history(out, name="train_history.json"):
    with open(os.path.join(out, name)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def straight(imagenet_sample, tmp_path_factory):
    """The reference: 4 epochs in one go."""
    out = tmp_path_factory.mktemp("straight")
    result = train(imagenet_sample, out, "--epoch_size", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("sig, at", [(signal.SIGTERM, "epoch 2/4 step 3/5"), (signal.SIGINT, "epoch 3/4 step 1/5")])
def test_signal_saves_where_it_stopped_and_resume_auto_equals_the_straight_run(straight, imagenet_sample, tmp_path,
                                                                               sig, at):
    process = start_train(imagenet_sample, tmp_path, "--epoch_size", "4")
    out, err = signal_at(process, at, sig)
    assert process.returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM)   # Ctrl-C arrives as SIGTERM (guard.py)
    stopped = [line for line in err.splitlines() if line.startswith("interrupted by SIGINT/SIGTERM after epoch ")]
    assert len(stopped) == 1 and "Traceback" not in err, err[-3000:]
    path = stopped[0].split("resumable checkpoint ")[1].split(";")[0]
    epoch, step = map(int, os.path.basename(path)[4:-5].split("_"))
    assert os.path.isfile(path) and step < 5                          # finished the step it was in, mid-epoch
    assert np.isfinite(read(path)[0]["cls"]).all()
    resumed = train(imagenet_sample, tmp_path, "--epoch_size", "4", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {path}" in resumed.stdout
    assert f"epochs {epoch}..4 (from step {step + 1} of epoch {epoch})" in resumed.stdout
    # the same learning rate at every step, the same data order, the same weights
    ours, theirs = history(tmp_path), history(straight)
    assert [h["step"] for h in ours] == list(range(1, 21))
    assert [h["lr"] for h in ours] == [h["lr"] for h in theirs]
    # the same float32 operations on the same values in the same order (the checkpoint holds them bit for bit): equal,
    # on any machine (docs/faults.md: max difference 0)
    assert [h["loss"] for h in ours] == [h["loss"] for h in theirs]
    a, b = weights(tmp_path / "vit-4_5.ckpt"), weights(straight / "vit-4_5.ckpt")
    assert max(np.abs(a[k] - b[k]).max() for k in a) == 0
    # the metrics history continues; best.ckpt holds the best epoch of the whole run
    val = history(tmp_path, "val_history.json")
    assert [h["epoch"] for h in val] == [1, 2, 3, 4]
    best = max(val, key=lambda h: h["top1"])
    assert read(tmp_path / "best.ckpt")[1]["epoch"] == best["epoch"]


def test_sigkill_leaves_only_complete_checkpoints_and_resume_auto_finishes(imagenet_sample, tmp_path):
    process = start_train(imagenet_sample, tmp_path, "--epoch_size", "3")
    signal_at(process, "epoch 2/3 step 2/5", signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    for path in glob.glob(str(tmp_path / "*.ckpt")):                 # every file that looks like one reads whole
        read(path)
    assert os.path.isfile(tmp_path / "vit-1_5.ckpt")
    open(tmp_path / "vit-2_3.tmp", "wb").write(b"half a checkpoint")  # as a kill during a save leaves it
    resumed = train(imagenet_sample, tmp_path, "--epoch_size", "3", "--resume", "auto")  # the lock died with it
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from " + str(tmp_path / "vit-1_5.ckpt") in resumed.stdout
    assert sorted(glob.glob(str(tmp_path / "*.ckpt"))) == [str(tmp_path / n) for n in
                                                             ("best.ckpt", "vit-2_5.ckpt", "vit-3_5.ckpt")]
    assert not glob.glob(str(tmp_path / "*.tmp")) and not glob.glob(str(tmp_path / ".*.tmp*"))


def test_resume_auto_without_checkpoint_starts_a_new_run(imagenet_sample, tmp_path):
    result = train(imagenet_sample, tmp_path, "--epoch_size", "1", "--resume", "auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"no checkpoint in {tmp_path} to resume: starting a new run" in result.stdout
    assert os.path.isfile(tmp_path / "vit-1_5.ckpt")


def test_second_run_in_the_same_folder_is_refused(imagenet_sample, tmp_path):
    first = start_train(imagenet_sample, tmp_path, "--epoch_size", "200")
    for line in first.stdout:
        if line.startswith("epoch 1/200 step 1/5"):
            break
    second = train(imagenet_sample, tmp_path, "--epoch_size", "2")
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=300)
    assert_clean_error(second, f"{tmp_path} is in use by another training run (process {first.pid})")
    assert "training " not in second.stdout
    assert first.returncode == 128 + signal.SIGTERM


def test_nonfinite_loss_stops_and_keeps_the_good_checkpoints(imagenet_sample, tmp_path):
    first = train(imagenet_sample, tmp_path, "--epoch_size", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    good = {n: open(tmp_path / n, "rb").read() for n in ("vit-1_5.ckpt", "best.ckpt")}
    result = train(imagenet_sample, tmp_path, "--epoch_size", "3", "--resume", "auto", "--lr", "1e30")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "the loss is nan at epoch 2 step " in errors[0], result.stderr[-2000:]
    assert "learning rate " in errors[0] and "--lr" in errors[0] and "vit-1_5.ckpt" in errors[0]
    assert sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "*.ckpt"))) == sorted(good)
    for name, content in good.items():
        assert open(tmp_path / name, "rb").read() == content


def test_loss_scale_skips_overflowing_steps_and_says_so(imagenet_sample, tmp_path):
    """AMP O2 (float16, on CPU too) with an absurd learning rate: float16 gradients overflow; the loss scale halves
    and those steps are skipped, counted on the progress lines, and the run goes on with finite weights."""
    result = train(imagenet_sample, tmp_path, "--epoch_size", "1", "--amp_level", "O2", "--lr", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = [line for line in result.stdout.splitlines() if " skipped 1 overflowing step (loss scale " in line]
    assert len(skipped) >= 1
    assert sum(h.get("skipped", 0) for h in history(tmp_path)) == len(skipped)
    assert all(np.isfinite(v).all() for v in weights(tmp_path / "vit-1_5.ckpt").values())


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))   # the tiny run's checkpoints are ~600 KB


def test_full_disk_keeps_the_previous_checkpoints(imagenet_sample, tmp_path):
    first = train(imagenet_sample, tmp_path, "--epoch_size", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    process = start_train(imagenet_sample, tmp_path, "--epoch_size", "2", "--resume", "auto",
                          preexec_fn=_limit_file_size)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 1 and "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"cannot write {tmp_path / 'vit-2_5.ckpt'}: File too large" in errors[0], err
    assert "intact (checkpoints: vit-1_5.ckpt, best.ckpt)" in errors[0]
    assert sorted(os.listdir(tmp_path)) == [".lock", "best.ckpt", "config.yaml", "curves.png", "train_history.json",
                                            "val_history.json", "vit-1_5.ckpt"]
    read(tmp_path / "vit-1_5.ckpt")


def test_unwritable_checkpoint_folder_is_an_error_before_training(imagenet_sample, tmp_path):
    (tmp_path / "a_file").write_text("")
    result = train(imagenet_sample, tmp_path / "a_file" / "run", "--epoch_size", "1")
    assert_clean_error(result, f"cannot write to --ckpt_save_dir {tmp_path / 'a_file' / 'run'}: Not a directory")
    assert "training " not in result.stdout


def test_damaged_checkpoint_is_one_error_line_everywhere(imagenet_sample, tmp_path):
    """A cut file and a flipped byte through every entry script; every crafted kind (crafted_ckpt.kinds, and a file
    MindSpore encrypted) through one of them in turn, the heap-corrupting one (Float32 dims [1] with 1 MiB: "double
    free or corruption" in MindSpore's loader) through all: one error line, status 2, no signal, no traceback."""
    import mindspore as ms
    result = train(imagenet_sample, tmp_path / "run", "--epoch_size", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    raw = open(tmp_path / "run" / "vit-1_5.ckpt", "rb").read()
    cut, flipped = tmp_path / "cut.ckpt", tmp_path / "flipped.ckpt"
    cut.write_bytes(raw[:len(raw) // 2])
    damaged = bytearray(raw)
    damaged[len(raw) // 2] ^= 0x55                                     # one byte inside a weight: the CRC catches it
    flipped.write_bytes(bytes(damaged))
    image = glob.glob(os.path.join(imagenet_sample, "val", "*", "*"))[0]

    def scripts(bad):
        return [("train.py", "--data_dir", imagenet_sample, "--resume", str(bad),
                 "--ckpt_save_dir", str(tmp_path / "resumed")),
                ("train.py", "--data_dir", imagenet_sample, "--pretrained", str(bad),
                 "--ckpt_save_dir", str(tmp_path / "finetuned")),
                ("eval.py", "--data_dir", imagenet_sample, "--ckpt_path", str(bad)),
                ("infer.py", "--ckpt_path", str(bad), image),
                ("export.py", "--ckpt_path", str(bad), "--file_format", "MINDIR"),
                ("-m", "ms_vit.weights.convert", str(bad), "--out", str(tmp_path / "converted.ckpt"))]

    cases = [(args, (f"cannot read checkpoint {bad}: the file is truncated or corrupted",))
             for bad in (cut, flipped) for args in scripts(bad)]
    crafted = crafted_ckpt.kinds(raw)
    ms.save_checkpoint([{"name": "w", "data": ms.Tensor(np.ones(3, np.float32))}], str(tmp_path / "enc.ckpt"),
                       enc_key=b"0123456789abcdef")
    crafted["encrypted"] = (open(tmp_path / "enc.ckpt", "rb").read(), "it is encrypted")
    for i, (name, (data, says)) in enumerate(crafted.items()):
        bad = tmp_path / f"crafted-{i}.ckpt"
        bad.write_bytes(data)
        runs = scripts(bad) if i == 0 else [scripts(bad)[i % 6]]
        cases += [(args, (f"cannot read checkpoint {bad}: ", says)) for args in runs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:      # two processes at a time
        for (args, fragments), result in zip(cases, pool.map(lambda case: run_script(*case[0]), cases)):
            assert_clean_error(result, *fragments)
    # the converter's inputs: a cut safetensors file
    from safetensors.numpy import save_file
    source = tmp_path / "model.safetensors"
    save_file({"cls_token": np.zeros((1, 1, 48), np.float32)}, str(source))
    source.write_bytes(source.read_bytes()[:-20])
    assert_clean_error(run_script("-m", "ms_vit.weights.convert", str(source), "--out", str(tmp_path / "x.ckpt")),
                       f"cannot read {source}")


def test_resume_auto_passes_over_a_damaged_newest_checkpoint(straight, imagenet_sample, tmp_path):
    """The newest epoch checkpoint empty (a 0-byte file once read as "no parameters": a silent new run that then
    replaced best.ckpt): --resume auto says so in one line and continues from the one before, to the straight run's
    weights."""
    shutil.copytree(straight, tmp_path, dirs_exist_ok=True)
    open(tmp_path / "vit-4_5.ckpt", "wb").close()
    resumed = train(imagenet_sample, tmp_path, "--epoch_size", "4", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    passed_over = [line for line in resumed.stderr.splitlines() if "vit-4_5.ckpt" in line]
    assert passed_over == [f"cannot read checkpoint {tmp_path / 'vit-4_5.ckpt'}: the file is truncated or corrupted "
                           f"(0 bytes: empty): passing over it, resuming from {tmp_path / 'vit-3_5.ckpt'} instead"]
    assert f"resuming from {tmp_path / 'vit-3_5.ckpt'}" in resumed.stdout and "epochs 4..4" in resumed.stdout
    a, b = weights(tmp_path / "vit-4_5.ckpt"), weights(straight / "vit-4_5.ckpt")
    assert max(np.abs(a[k] - b[k]).max() for k in a) < 1e-5      # the run as if never damaged (see the signal test)


def test_resume_auto_refuses_when_no_checkpoint_reads(straight, imagenet_sample, tmp_path):
    """Every epoch checkpoint damaged (one empty, one with a flipped byte): --resume auto does not start a new run
    over them; one error line names them, and nothing in the folder changes."""
    shutil.copytree(straight, tmp_path, dirs_exist_ok=True)
    open(tmp_path / "vit-4_5.ckpt", "wb").close()
    damaged = bytearray(open(tmp_path / "vit-3_5.ckpt", "rb").read())
    damaged[len(damaged) // 2] ^= 0x55
    (tmp_path / "vit-3_5.ckpt").write_bytes(bytes(damaged))
    before = {name: open(tmp_path / name, "rb").read() for name in os.listdir(tmp_path) if name != ".lock"}
    result = train(imagenet_sample, tmp_path, "--epoch_size", "5", "--resume", "auto")
    assert_clean_error(result, f"no checkpoint in {tmp_path} can be read (cannot read checkpoint "
                               f"{tmp_path / 'vit-4_5.ckpt'}: ",
                       f"cannot read checkpoint {tmp_path / 'vit-3_5.ckpt'}: the file is truncated or corrupted",
                       "--resume auto does not start a new run over them")
    assert "training " not in result.stdout
    assert {name: open(tmp_path / name, "rb").read() for name in os.listdir(tmp_path) if name != ".lock"} == before


# --- images ------------------------------------------------------------------------------------------------------

def _variants(photo: Image.Image, folder):
    """One photo in every mode a dataset may hold; returns name -> (path, the RGB image it stands for)."""
    rgb = photo.convert("RGB").resize((64, 48))
    gray16 = (np.asarray(rgb.convert("L")).astype(np.uint16) * 257)
    made = {
        "gray.jpg": (rgb.convert("L"), None), "cmyk.jpg": (rgb.convert("CMYK"), None),
        "palette.png": (rgb.convert("P"), None), "rgba.png": (rgb.convert("RGBA"), None),
        "gray16.png": (Image.fromarray(gray16), np.repeat((gray16 >> 8).astype(np.uint8)[..., None], 3, -1)),
    }
    out = {}
    for name, (image, expected) in made.items():
        path = os.path.join(folder, name)
        image.save(path)
        reference = Image.open(path)
        out[name] = (path, expected if expected is not None else np.asarray(reference.convert("RGB")))
    return out


def test_every_image_mode_is_read_as_rgb(imagenet_sample, tmp_path):
    from mindspore.dataset import vision
    photo = Image.open(sorted(glob.glob(os.path.join(imagenet_sample, "val", "*", "*")))[0])
    for name, (path, expected) in _variants(photo, tmp_path).items():
        decoded = vision.Decode()(np.fromfile(path, np.uint8))     # what the pipeline and infer.py decode with
        assert decoded.shape == expected.shape and decoded.dtype == np.uint8, name
        assert np.abs(decoded.astype(int) - expected).max() <= 1, name   # Pillow's own conversion to RGB


def _dataset_of_variants(imagenet_sample, root):
    """The 20 photos, each class folder holding its photo in another mode as well."""
    shutil.copytree(imagenet_sample, root)
    for i, folder in enumerate(sorted(glob.glob(os.path.join(root, "train", "*")))):
        photo = Image.open(glob.glob(os.path.join(folder, "*"))[0])
        variants = _variants(photo, folder)
        keep = list(variants)[i % len(variants)]
        for name, (path, _) in variants.items():
            if name != keep:
                os.remove(path)
    return root


def test_training_and_inference_take_every_mode(imagenet_sample, tmp_path):
    root = _dataset_of_variants(imagenet_sample, str(tmp_path / "data"))
    result = run_script("train.py", "--data_dir", root, "--ckpt_save_dir", str(tmp_path / "run"), *RUN,
                        "--epoch_size", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "39 train / 20 val images" in result.stdout
    modes = ("gray.jpg", "cmyk.jpg", "palette.png", "rgba.png", "gray16.png")
    images = [sorted(glob.glob(os.path.join(root, "train", "*", mode)))[0] for mode in modes]
    inferred = run_script("infer.py", "--ckpt_path", str(tmp_path / "run" / "best.ckpt"), *images,
                          "--output_dir", str(tmp_path / "pictures"))
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "pictures")) == sorted(f"{m.split('.')[0]}_pred.png" for m in modes)


def test_truncated_and_bomb_images_are_named_before_any_work(imagenet_sample, tmp_path):
    root = str(tmp_path / "data")
    shutil.copytree(imagenet_sample, root)
    victim = sorted(glob.glob(os.path.join(root, "train", "*", "*")))[3]
    raw = open(victim, "rb").read()
    open(victim, "wb").write(raw[:len(raw) * 2 // 3])                  # the header is intact: PIL's verify passes
    Image.open(victim).verify()
    bomb = os.path.join(os.path.dirname(victim), "huge.png")
    Image.new("1", (9500, 9500)).save(bomb)                            # 90,250,000 pixels in ~12 KB
    result = train(root, tmp_path / "run", "--epoch_size", "1")
    assert_clean_error(result, "2 of 21 images in", f"{victim}: truncated (the JPEG data stops before its end marker)",
                       f"{bomb}: 9500x9500 = 90,250,000 pixels, over the decompression-bomb limit of 89,478,485")
    assert "training " not in result.stdout
    ckpt = tmp_path / "model.ckpt"
    from ms_vit import create_model
    from ms_vit.weights import checkpoint
    checkpoint.save(create_model("vit_ti_16_224", num_classes=19, image_size=32, patch_size=8, embed_dim=48, depth=2,
                                 num_heads=3, mlp_dim=96), str(ckpt))
    for image, reason in ((victim, "truncated"), (bomb, "decompression-bomb limit")):
        assert_clean_error(run_script("infer.py", "--ckpt_path", str(ckpt), image), f"cannot use image {image}",
                           reason)
    assert_clean_error(run_script("eval.py", "--data_dir", root, "--split", "train", "--ckpt_path", str(ckpt)),
                       "truncated")


def test_check_image_accepts_bytes_after_the_end_marker(imagenet_sample, tmp_path):
    from ms_vit.data.image_files import check_image
    photo = sorted(glob.glob(os.path.join(imagenet_sample, "val", "*", "*")))[0]
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(open(photo, "rb").read() + b"\0" * 100)       # cameras and editors pad files so
    assert check_image(str(padded)) is None and check_image(photo) is None
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert check_image(str(tmp_path / "empty.jpg")) == "empty file"
    (tmp_path / "text.jpg").write_text("not an image")
    assert check_image(str(tmp_path / "text.jpg")).startswith("not a readable image")


def test_run_folders_of_another_user_and_planted_links_are_refused(imagenet_sample, tmp_path):
    """A run folder is the user's own: one that belongs to another user (whose vit-*.ckpt could be anyone's) is
    refused before any work; a planted symbolic link at the lock's fixed name is not followed; a write leaves no
    file at a fixed temporary name (each is created new)."""
    from ms_vit import files
    from ms_vit.training.run_folder import RunFolder, RunFolderError
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)                                  # nobody (the tests run as root)
    result = train(imagenet_sample, foreign, "--epoch_size", "1")
    assert_clean_error(result, f"--ckpt_save_dir {foreign} belongs to another user")
    assert os.listdir(foreign) == []
    planted = tmp_path / "planted"
    planted.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("do not truncate me")
    os.symlink(victim, planted / ".lock")
    with pytest.raises(RunFolderError, match="cannot write to --ckpt_save_dir"):
        RunFolder(str(planted)).open()
    assert victim.read_text() == "do not truncate me"
    # the temporary file of an atomic write is a new file: a link planted at the old fixed name is not written through
    os.symlink(victim, planted / ".config.yaml.tmp.yaml")
    files.write_atomically(str(planted / "config.yaml"), lambda tmp: open(tmp, "w").write("a: 1\n"))
    assert victim.read_text() == "do not truncate me" and (planted / "config.yaml").read_text() == "a: 1\n"
