"""Every entry script against a table of mistakes a user makes: each ends with one ``error:`` line naming the
option or file, exit status 2, no traceback, and nothing of the user's touched. The numeric options of train.py are
also swept in-process with Hypothesis: a value the parser takes is in the option's range, a value out of it is one
error naming the option."""
import concurrent.futures
import glob
import hashlib
import os
import shutil
import sys

import pytest
from conftest import ROOT
from helpers import TINY_ARGS, run_script

# {placeholders} filled in by the fixture below
TRAIN = ["train.py", "--data_dir", "{data}", "--ckpt_save_dir", "{run}", "--epoch_size", "1", "--batch_size", "4",
         *TINY_ARGS]
EVAL = ["eval.py", "--data_dir", "{data}", "--ckpt_path", "{ckpt}"]
INFER = ["infer.py", "--ckpt_path", "{ckpt}", "{image}", "--output_dir", "{run}/pictures"]
EXPORT = ["export.py", "--ckpt_path", "{ckpt}", "--output", "{run}/model"]
MISTAKES = [
    # (command, what the one error line must say)
    (TRAIN + ["--epoch_size", "0"], "argument --epoch_size: must be an integer at least 1, not '0'"),
    (TRAIN + ["--epoch_size", "-1"], "argument --epoch_size: must be an integer at least 1, not '-1'"),
    (TRAIN + ["--epoch_size", "2.5"], "argument --epoch_size: must be an integer at least 1, not '2.5'"),
    (TRAIN + ["--batch_size", "0"], "argument --batch_size: must be an integer at least 1"),
    (TRAIN + ["--num_workers", "0"], "argument --num_workers: must be an integer at least 1"),
    (TRAIN + ["--lr", "-1"], "argument --lr: must be a number above 0, not '-1'"),
    (TRAIN + ["--lr", "nan"], "argument --lr: must be a number above 0, not 'nan'"),
    (TRAIN + ["--lr", "fast"], "argument --lr: must be a number above 0, not 'fast'"),
    (TRAIN + ["--lr", "0.1", "--min_lr", "1"], "--min_lr 1 is above --lr 0.1"),
    (TRAIN + ["--hflip", "1.5"], "argument --hflip: must be a number at least 0 and at most 1"),
    (TRAIN + ["--drop_path_rate", "1"], "argument --drop_path_rate: must be a number at least 0 and below 1"),
    (TRAIN + ["--label_smoothing", "1"], "argument --label_smoothing"),
    (TRAIN + ["--ema_decay", "1.5"], "argument --ema_decay"),
    (TRAIN + ["--min_crop_scale", "0"], "argument --min_crop_scale: must be a number above 0 and at most 1"),
    (TRAIN + ["--keep_checkpoint_max", "0"], "argument --keep_checkpoint_max"),
    (TRAIN + ["--log_interval", "0"], "argument --log_interval"),
    (TRAIN + ["--sink_size", "0"], "argument --sink_size"),
    (TRAIN + ["--accumulation_steps", "0"], "argument --accumulation_steps"),
    (TRAIN + ["--seed", "-1"], "argument --seed: must be an integer at least 0"),
    (TRAIN + ["--aug_repeats", "-2"], "argument --aug_repeats"),
    (TRAIN + ["--amp_level", "O5"], "argument --amp_level: invalid choice: 'O5'"),
    (TRAIN + ["--amp_level", "O2", "--amp_dtype", "bfloat16"], "--amp_dtype bfloat16 trains on Ascend 910B"),
    (TRAIN + ["--no_such_option"], "unrecognized arguments: --no_such_option"),
    (TRAIN + ["--model", "vit_x_16_224"], "vit_x_16_224"),
    (TRAIN + ["--patch_size", "5"], "image_size 32 is not a multiple of patch_size 5"),
    (TRAIN + ["--num_heads", "5"], "embed_dim 48 is not divisible by num_heads 5"),
    (TRAIN + ["--layer_decay", "0.5", "--optimizer", "adam"], "--layer_decay needs --optimizer adamw"),
    (TRAIN + ["--batch_size", "64"], "16 training images make no full step of batch 64: lower --batch_size"),
    (TRAIN + ["--device_target", "Ascend"], "--device_target Ascend: Ascend unavailable"),
    (TRAIN + ["--device_kernels"], "--device_kernels"),
    (TRAIN + ["--distribute"], "--distribute runs one process per device, started by MindSpore's launcher"),
    (["train.py", *TINY_ARGS], "--data_dir is required"),
    (TRAIN[:2] + ["{missing}"] + TRAIN[3:], "split folder not found: {missing}/train"),
    (TRAIN[:2] + ["{user_file}"] + TRAIN[3:], "split folder not found: {user_file}/train"),
    (TRAIN[:4] + ["{user_file}"] + TRAIN[5:], "argument --ckpt_save_dir: {user_file} is a file, not a folder"),
    (TRAIN + ["--config", "{missing}.yaml"], "cannot read config {missing}.yaml"),
    (TRAIN + ["--config", "{bad_key_yaml}"], "unknown key(s) epochs"),
    (TRAIN + ["--config", "{bad_value_yaml}"], "epoch_size must be an integer at least 1, not 0"),
    (TRAIN + ["--config", "{user_file}"], "must be a mapping of train.py options"),
    (TRAIN + ["--resume", "{missing}.ckpt"], "checkpoint not found: {missing}.ckpt"),
    (TRAIN[:4] + ["{old_run}"] + TRAIN[5:], "--ckpt_save_dir {old_run} holds another run (best.ckpt)"),
    (TRAIN[:4] + ["{old_run}"] + TRAIN[5:] + ["--resume", "{ckpt}"], "--ckpt_save_dir {old_run} holds another run"),
    (TRAIN[:4] + ["{old_run}"] + TRAIN[5:] + ["--resume", "auto"], "holds best.ckpt but no epoch checkpoint"),
    (TRAIN + ["--resume", "{user_file}"], "cannot read checkpoint {user_file}"),
    (TRAIN + ["--pretrained", "vit_nonexistent_16_224.somewhere"], "no pretrained weights named"),
    (TRAIN + ["--pretrained", "{missing}.ckpt"], "checkpoint not found: {missing}.ckpt"),
    (EVAL + ["--output", "{user_dir}"], "argument --output: {user_dir} is a folder: give a file name"),
    (EVAL + ["--output", "{user_file}/metrics.json"], "cannot write --output {user_file}/metrics.json"),
    (EVAL + ["--batch_size", "0"], "argument --batch_size"),
    (EVAL + ["--num_workers", "0"], "argument --num_workers"),
    (EVAL + ["--log_interval", "-1"], "argument --log_interval: must be a number at least 0"),
    (EVAL + ["--split", "test"], "split folder not found: {data}/test"),
    (EVAL + ["--image_size", "30"], "image_size 30 is not a multiple of patch_size 8"),
    (EVAL + ["--pretrained", "vit_b_16_224.mindvision"], "not allowed with argument --ckpt_path"),
    (["eval.py", "--data_dir", "{data}"], "one of the arguments --ckpt_path --pretrained is required"),
    (EVAL[:4] + ["{missing}.ckpt"], "checkpoint not found: {missing}.ckpt"),
    (INFER + ["--topk", "0"], "argument --topk: must be an integer at least 1, not '0'"),
    (INFER + ["--topk", "-1"], "argument --topk: must be an integer at least 1, not '-1'"),
    (INFER + ["--batch_size", "0"], "argument --batch_size"),
    (INFER[:-1] + ["{user_file}"], "argument --output_dir: {user_file} is a file, not a folder"),
    (INFER[:3] + ["{missing}.jpg"] + INFER[4:], "image not found: {missing}.jpg"),
    (INFER[:3] + ["{user_dir}"] + INFER[4:], "image not found: {user_dir}"),
    (INFER[:3] + ["{user_file}"] + INFER[4:], "cannot use image {user_file}: not a readable image"),
    (INFER[:2] + ["{run}/model.mindir"] + INFER[3:], "model not found: {run}/model.mindir"),
    (EXPORT + ["--file_format", "PNG"], "unknown --file_format PNG: choose one of MINDIR, ONNX, AIR"),
    (EXPORT + ["--batch_size", "0"], "argument --batch_size"),
    (EXPORT + ["--file_format", "AIR"], "AIR files are written on Ascend only"),
    (EXPORT[:-1] + ["{user_file}/model"], "cannot write --output {user_file}/model.mindir"),
    (["demo.py", "--epochs", "0"], "argument --epochs: must be an integer at least 1"),
    (["-m", "ms_vit.weights.convert", "{missing}.safetensors", "--out", "{run}/x.ckpt"], "{missing}.safetensors"),
]


@pytest.fixture(scope="module")
def sandbox(imagenet_sample, tmp_path_factory):
    """A dataset, a checkpoint that fits it, and a user's own files and folder (which no mistake may touch)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    data = root / "data"
    photos = sorted(glob.glob(os.path.join(imagenet_sample, "train", "*", "*")))[:16]
    for split, chosen in (("train", photos), ("val", photos[:4])):
        for path in chosen:
            folder = data / split / os.path.basename(os.path.dirname(path))
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder)
    classes = len(os.listdir(data / "train"))
    from ms_vit import create_model
    from ms_vit.data import list_classes
    from ms_vit.weights import checkpoint
    net = create_model("vit_ti_16_224", num_classes=classes, image_size=32, patch_size=8, embed_dim=48, depth=2,
                       num_heads=3, mlp_dim=96)
    ckpt = root / "model.ckpt"
    checkpoint.save(net, str(ckpt), meta={"classes": list_classes(str(data / "train"))})
    user_dir = root / "my_folder"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("mine")
    (root / "my_file.txt").write_text("also mine")
    old_run = root / "old_run"                                       # a run's best.ckpt: no new run may replace it
    old_run.mkdir()
    shutil.copy(ckpt, old_run / "best.ckpt")
    (root / "bad_key.yaml").write_text("epochs: 3\n")
    (root / "bad_value.yaml").write_text("epoch_size: 0\n")
    return dict(data=str(data), ckpt=str(ckpt), run=str(root / "run"), image=photos[0], user_dir=str(user_dir),
                user_file=str(root / "my_file.txt"), missing=str(root / "nowhere"),
                bad_key_yaml=str(root / "bad_key.yaml"), bad_value_yaml=str(root / "bad_value.yaml"),
                old_run=str(old_run), root=root)


def snapshot(root):
    """Every file under ``root`` but the scripts' own output folder, with its content's digest."""
    found = {}
    for folder, _, names in os.walk(root):
        if "run" in os.path.relpath(folder, root).split(os.sep):
            continue
        for name in names:
            path = os.path.join(folder, name)
            found[path] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return found


def load_script(name):
    """An entry script as a module (``eval.py`` as ``eval_script``: not the builtin)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"{name}_script", os.path.join(ROOT, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_stage(args, capsys):
    """What ``cli.run`` makes of the script's ``parse_args`` alone, in this process (the checks made before any
    work, where most mistakes stop): ``(exit status, stderr)``; None for commands without that stage."""
    from ms_vit import cli
    if not args[0].endswith(".py") or args[0] == "demo.py":
        return None
    parse = load_script(args[0][:-3]).parse_args
    try:
        status = cli.run(lambda argv: parse(argv) and 0, args[1:])
    except SystemExit as exc:                   # argparse's own exit
        status = exc.code
    return status, capsys.readouterr().err


def test_every_mistake_is_one_error_line_and_touches_nothing(sandbox, capsys):
    before = snapshot(sandbox["root"])
    cases = []                                  # each its own output folder: two cases run at a time
    for i, (command, fragment) in enumerate(MISTAKES):
        values = dict(sandbox, run=os.path.join(sandbox["run"], str(i)))
        cases.append(([part.format(**values) for part in command], fragment.format(**values)))
    outcomes, later = {}, []
    for args, fragment in cases:                # the parse stage in this process; the rest as real processes
        early = parse_stage(args, capsys)
        if early and early[0]:
            outcomes[tuple(args)] = early
        else:
            later.append(args)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for args, result in zip(later, pool.map(lambda args: run_script(*args, timeout=300), later)):
            outcomes[tuple(args)] = (result.returncode, result.stderr)
    failures = []
    for args, fragment in cases:
        status, stderr = outcomes[tuple(args)]
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        if status != 2 or len(errors) != 1 or fragment not in errors[0] or "Traceback" in stderr:
            failures.append(f"{' '.join(args)}: exit {status}, errors {errors}, stderr tail {stderr[-600:]!r}")
    assert not failures, "\n".join(failures)
    assert snapshot(sandbox["root"]) == before                       # nothing of the user's touched
    assert not glob.glob(os.path.join(sandbox["run"], "*", "*.ckpt"))          # and nothing trained
    assert len(later) >= 15                                          # the mistakes found after parsing: real runs


def test_onnx_export_without_onnx_names_the_install_before_any_work(sandbox, tmp_path):
    shadow = tmp_path / "no_onnx" / "onnx"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'onnx'\")\n")
    result = run_script(*[p.format(**sandbox) for p in EXPORT], "--file_format", "ONNX",
                        env=dict(PYTHONPATH=f"{tmp_path / 'no_onnx'}{os.pathsep}{ROOT}"))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert 'pip install "ms_vit[onnx]"' in errors[0] and 'pip install onnx "numpy<2"' in errors[0]
    assert "device: " not in result.stderr                            # before the model is even built


def test_a_closed_pipe_ends_quietly(sandbox):
    """``infer.py IMAGES | head -2``: the reader goes away after two lines."""
    import subprocess
    images = sorted(glob.glob(os.path.join(sandbox["data"], "train", "*", "*")))[:6]
    command = [sys.executable, "infer.py", "--ckpt_path", sandbox["ckpt"], *images, "--output_dir",
               os.path.join(sandbox["run"], "pipe")]
    producer = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    first = [producer.stdout.readline() for _ in range(2)]
    producer.stdout.close()                                          # what `head -2` does after its lines
    _, err = producer.communicate(timeout=300)
    assert first[0].decode().strip() == images[0]
    assert producer.returncode == 141 and err.decode().count("Error") == 0, err.decode()[-2000:]


# --- the parser, in-process ---------------------------------------------------------------------------------------

def _numeric_options():
    sys.path.insert(0, ROOT)
    import train
    parser = train.build_parser()
    return parser, {a.dest: a for a in parser._actions if callable(a.type) and a.type.__name__.startswith(("an ",
                                                                                                      "a "))}


def test_numeric_options_take_their_range_and_refuse_the_rest():
    from hypothesis import given, settings
    from hypothesis import strategies as st
    parser, options = _numeric_options()
    assert len(options) >= 30
    base = ["--data_dir", "x"]

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(name=st.sampled_from(sorted(options)),
           value=st.one_of(st.integers(-10 ** 6, 10 ** 6), st.floats(allow_nan=True, allow_infinity=True),
                           st.text(max_size=8)))
    def check(name, value):
        action = options[name]
        text = str(value)
        try:
            parsed = getattr(parser.parse_args(base + [action.option_strings[0], text]), name)
        except SystemExit as exc:
            assert exc.code == 2
            return
        assert action.type(parsed) == parsed             # a value it took is one its own check passes
    check()


def test_refusals_name_the_option(capsys):
    parser, options = _numeric_options()
    for name, action in options.items():
        with pytest.raises(SystemExit):
            parser.parse_args(["--data_dir", "x", action.option_strings[0], "nan"])
        err = capsys.readouterr().err
        assert err.startswith(f"error: argument {action.option_strings[0]}: must be ") and err.count("\n") == 1


CHECKPOINT_READERS = [
    # every entry that opens a checkpoint the user names, {bad}: the crafted file
    TRAIN + ["--resume", "{bad}"],
    TRAIN + ["--pretrained", "{bad}"],
    ["eval.py", "--data_dir", "{data}", "--ckpt_path", "{bad}"],
    ["infer.py", "--ckpt_path", "{bad}", "{image}", "--output_dir", "{run}/pictures"],
    ["export.py", "--ckpt_path", "{bad}", "--output", "{run}/model"],
    ["-m", "ms_vit.weights.convert", "{bad}", "--out", "{run}/converted.ckpt"],
]


def test_crafted_checkpoints_end_every_entry_script_in_one_line(sandbox, tmp_path):
    """Every kind of crafted or damaged checkpoint (tests/crafted_ckpt.py), each through one entry script in turn
    (every script meets several kinds), and the two that corrupted the heap of MindSpore's loader (a tensor's
    content longer than its dims, 1 TiB declared in 26 bytes) through every script: a real process ending in one
    ``error: cannot read checkpoint ...`` line, exit 2, no signal, no traceback, no output written."""
    import crafted_ckpt
    kinds = crafted_ckpt.kinds(open(sandbox["ckpt"], "rb").read())
    heap_breakers = ["oversize content (Float32 dims [1], 1 MiB)", "1 TiB declared in 26 bytes"]
    pairs = [(kind, CHECKPOINT_READERS[i % len(CHECKPOINT_READERS)]) for i, kind in enumerate(kinds)]
    pairs += [(kind, command) for kind in heap_breakers for command in CHECKPOINT_READERS[1:]]
    cases = []
    for i, (kind, command) in enumerate(pairs):
        bad = tmp_path / f"{i}.ckpt"
        bad.write_bytes(kinds[kind][0])
        values = dict(sandbox, bad=str(bad), run=str(tmp_path / f"run{i}"))
        cases.append((kind, [part.format(**values) for part in command], f"cannot read checkpoint {bad}"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda case: run_script(*case[1], timeout=300), cases))
    failures = []
    for (kind, args, fragment), result in zip(cases, results):
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        if result.returncode != 2 or len(errors) != 1 or fragment not in errors[0] or "Traceback" in result.stderr:
            failures.append(f"{kind} / {' '.join(args[:2])}: exit {result.returncode}, errors {errors}, "
                            f"stderr tail {result.stderr[-400:]!r}")
    assert not failures, "\n".join(failures)
    assert not any(os.listdir(tmp_path / f"run{i}") for i in range(len(cases)) if (tmp_path / f"run{i}").exists())
