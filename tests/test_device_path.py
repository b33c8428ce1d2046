"""The Ascend/GPU training path, run here: MindSpore's dataset-sink cadence replayed on CPU (ms_vit.sink) with train.py
as a user runs it, the float16 overflow stop, the choice of sink size, the device kernels' checkable parts, the
device line, recomputation."""
import json
import os
import re
import signal

import numpy as np
import pytest
from bounds import LAMBDA, U, assert_within, gelu_error, gradient_relative_bound, matmul, softmax
from helpers import TINY_ARGS, assert_clean_error, run_script
from test_faults import signal_at, start_train, weights

# 20 photos, batch 2: 10 steps per epoch; no augmentation, no stochastic depth: a function of the seed
RUN = ["--batch_size", "2", "--no_augment", "--drop_path_rate", "0", "--lr", "1e-2", "--warmup_epochs", "1",
       *TINY_ARGS]


def train(data, out, *args):
    return run_script("train.py", "--data_dir", data, "--ckpt_save_dir", str(out), *RUN, *args)


def progress_steps(stdout):
    return [line.split()[3] for line in stdout.splitlines() if re.match(r"epoch \d+/\d+ step ", line)]


def test_choose_sink_size():
    from ms_vit.sink import choose_sink_size
    assert choose_sink_size(100, 1251) == 9                 # ImageNet, 8 x 128: 1251 = 9 x 139
    assert choose_sink_size(100, 1000) == 100
    assert choose_sink_size(5, 10) == 5 and choose_sink_size(4, 10) == 2 and choose_sink_size(1, 10) == 1
    assert choose_sink_size(5, 20, done_steps=30) == 5        # resumed at step 10 of an epoch of 20
    assert choose_sink_size(5, 20, done_steps=23) == 1        # resumed at step 3: step by step


def test_sink_replay_trains_step_for_step_as_step_by_step(imagenet_sample, tmp_path):
    """--sink_size 5 on CPU runs MindSpore's own sink loop (callbacks once per 5 steps, cur_step_num jumping by 5):
    the same weights as step by step; progress, history and checkpoints counted in real steps and epochs."""
    step_run = train(imagenet_sample, tmp_path / "steps", "--epoch_size", "2", "--log_interval", "1")
    sink_run = train(imagenet_sample, tmp_path / "sinks", "--epoch_size", "2", "--log_interval", "1",
                     "--sink_size", "5")
    for result in (step_run, sink_run):
        assert result.returncode == 0, result.stderr[-3000:]
    assert "10 steps of batch 2 per epoch, sinks of 5 steps, epochs 1..2" in sink_run.stdout
    assert sink_run.stdout.startswith("device: CPU (Ascend unavailable (")
    # --log_interval 1, but the host looks only after each sink
    assert progress_steps(sink_run.stdout) == ["5/10", "10/10", "5/10", "10/10"]
    sinks = json.load(open(tmp_path / "sinks" / "train_history.json"))
    assert [h["step"] for h in sinks] == [5, 10, 15, 20]
    # each sink's loss is the mean over its 5 steps: the step-by-step run's losses, 5 at a time
    steps = [h["loss"] for h in json.load(open(tmp_path / "steps" / "train_history.json"))]
    assert len(steps) == 20
    # the same step losses (the weights are bit-equal below), summed in float32 on the device: gamma(4) = 2.4e-7
    # relative; rel 1e-5 is safe, and one step counted twice or missing (20 %) fails
    assert [h["loss"] for h in sinks] == pytest.approx([np.mean(steps[i:i + 5]) for i in range(0, 20, 5)], rel=1e-5)
    assert sorted(p for p in os.listdir(tmp_path / "sinks") if p.startswith("vit-")) == ["vit-1_10.ckpt",
                                                                                       "vit-2_10.ckpt"]
    from ms_vit import checkpoint
    _, meta = checkpoint.read(str(tmp_path / "sinks" / "vit-2_10.ckpt"))
    assert meta["global_step"] == 20 and meta["epoch"] == 2
    a, b = weights(tmp_path / "steps" / "vit-2_10.ckpt"), weights(tmp_path / "sinks" / "vit-2_10.ckpt")
    assert max(np.abs(a[k] - b[k]).max() for k in a) == 0.0
    assert json.load(open(tmp_path / "steps" / "val_history.json")) == \
        json.load(open(tmp_path / "sinks" / "val_history.json"))


def test_sigterm_under_sinks_stops_at_a_sink_boundary_and_resumes(imagenet_sample, tmp_path):
    """SIGTERM during a sink: the sink finishes, the run stops at its boundary with a resumable checkpoint; the
    resumed run (sinking again) ends with the weights of a straight step-by-step run."""
    one = ["--batch_size", "1", "--log_interval", "1"]                   # 20 steps per epoch
    straight = run_script("train.py", "--data_dir", imagenet_sample, "--ckpt_save_dir", str(tmp_path / "straight"),
                          *RUN, *one, "--epoch_size", "3")
    assert straight.returncode == 0, straight.stderr[-3000:]
    process = start_train(imagenet_sample, tmp_path / "run", *one, "--epoch_size", "3", "--sink_size", "5")
    out, err = signal_at(process, "epoch 2/3 step 5/20", signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped = [line for line in err.splitlines() if line.startswith("interrupted by SIGINT/SIGTERM after epoch 2 ")]
    assert len(stopped) == 1, err[-3000:]
    path = stopped[0].split("resumable checkpoint ")[1].split(";")[0]
    step = int(re.search(r"vit-2_(\d+)\.ckpt$", path).group(1))
    assert step in (10, 15, 20)                                         # a sink boundary after the signal
    from ms_vit import checkpoint
    assert checkpoint.read(path)[1]["global_step"] == 20 + step
    resumed = run_script("train.py", "--data_dir", imagenet_sample, "--ckpt_save_dir", str(tmp_path / "run"), *RUN,
                         *one, "--epoch_size", "3", "--sink_size", "5", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "sinks of 5 steps" in resumed.stdout
    assert f"epochs 2..3 (from step {step + 1} of epoch 2)" in resumed.stdout or step == 20
    a, b = weights(tmp_path / "straight" / "vit-3_20.ckpt"), weights(tmp_path / "run" / "vit-3_20.ckpt")
    assert max(np.abs(a[k] - b[k]).max() for k in a) == 0.0              # the same operations, bit for bit
    history = json.load(open(tmp_path / "run" / "train_history.json"))
    assert [h["step"] for h in history] == list(range(5, 61, 5))


def test_float16_steps_that_keep_overflowing_stop_the_run(imagenet_sample, tmp_path):
    """Every float16 step overflows (a head too large for float16): the loss scale halves to its floor and the run
    stops after 32 skipped steps in a row, with one line; those weights are not saved."""
    import mindspore as ms

    from ms_vit import checkpoint, create_model
    ms.set_context(mode=ms.GRAPH_MODE)
    net = create_model("vit_ti_16_224", num_classes=19, image_size=32, patch_size=8, embed_dim=48, depth=2,
                       num_heads=3, mlp_dim=96, fused_kernels=False)
    net.dense.weight.set_data(ms.Tensor(net.dense.weight.asnumpy() * 1e6))   # float16 logits: inf
    start = tmp_path / "huge_head.ckpt"
    checkpoint.save(net, str(start))
    result = run_script("train.py", "--data_dir", imagenet_sample, "--ckpt_save_dir", str(tmp_path / "run"),
                        "--batch_size", "1", "--epoch_size", "3", "--amp_level", "O2", "--pretrained", str(start),
                        "--log_interval", "4", *TINY_ARGS)
    assert result.returncode == 1, (result.stdout[-2000:], result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors[0].startswith("error: 32 steps in a row overflowed in float16 up to epoch 2 step 12/20")
    assert "vit-1_20.ckpt" in errors[0] and "--amp_level O0" in errors[0]
    assert "skipped 4 overflowing steps (loss scale 1)" in result.stdout
    assert sorted(p for p in os.listdir(tmp_path / "run") if p.startswith("vit-")) == ["vit-1_20.ckpt"]


def test_device_line_and_a_missing_backend(imagenet_sample, tmp_path):
    from ms_vit import device
    notes = [device._missing_reason(d) for d in ("Ascend", "GPU")]
    assert notes[0].startswith("Ascend unavailable (") and "CANN" in notes[0]
    assert notes[1].startswith("GPU unavailable (") and "CUDA" in notes[1]
    result = run_script("train.py", "--data_dir", imagenet_sample, "--ckpt_save_dir", str(tmp_path),
                        "--device_target", "Ascend", *TINY_ARGS)
    assert_clean_error(result, "--device_target Ascend: Ascend unavailable (", "the available device is CPU")


def test_one_operator_gelu_is_the_exact_gelu():
    """The device kernels' GELU (MindSpore's GeLU operator, one kernel on Ascend) runs on CPU too: its numbers."""
    import mindspore as ms
    from scipy.special import erf

    from ms_vit.layers import GELU
    ms.set_context(mode=ms.GRAPH_MODE)
    x = np.linspace(-8, 8, 4001).astype(np.float32)
    got = GELU(one_op=True)(ms.Tensor(x)).asnumpy()
    exact = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
    assert_within(got, exact, gelu_error(x), "one-operator GELU vs float64")     # the tanh form: 4.7e-4 off


def documented_flash_attention_score(query, key, value, head_num, keep_prob=1.0, scalar_value=1.0,
                                     input_layout="BSH"):
    """``ops.flash_attention_score`` as MindSpore documents it (no mask, no dropout):
    ``softmax(scale * query key^T) value``, per head, in the given layout."""
    import mindspore as ms
    q, k, v = (t.asnumpy().astype(np.float64) for t in (query, key, value))
    if input_layout == "BSH":                                   # (B, S, N * D) -> (B, N, S, D)
        q, k, v = (t.reshape(t.shape[0], t.shape[1], head_num, -1).transpose(0, 2, 1, 3) for t in (q, k, v))
    elif input_layout != "BNSD":
        raise NotImplementedError(input_layout)
    assert q.shape[1] == head_num and keep_prob == 1.0
    scores = scalar_value * q @ k.transpose(0, 1, 3, 2)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    out = (weights / weights.sum(-1, keepdims=True)) @ v
    if input_layout == "BSH":
        out = out.transpose(0, 2, 1, 3).reshape(out.shape[0], out.shape[2], -1)
    return ms.Tensor(out.astype(np.float32))


def test_flash_attention_arguments_follow_its_documented_formula():
    """FlashAttention (Ascend 910B) cannot run here; its arguments can be checked: with the operator replaced by its
    documented formula, the attention it computes equals the unfused attention."""
    import mindspore as ms

    from ms_vit.layers import FlashAttention
    from ms_vit.vit import Attention
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        ms.set_seed(0)
        attention = Attention(64, 4)                  # head dim 16: FlashAttention takes multiples of 16
        flash = FlashAttention(4)
        flash.attention_op = documented_flash_attention_score
        x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 17, 64)).astype(np.float32))
        q, k, v = attention.split_heads(attention.qkv(x))
        unfused = attention.attn_v(attention.softmax(attention.q_kt(q, k)), v).asnumpy()
        # the formula in float64, rounded once; the unfused attention in float32 from the same q, k, v: its
        # products, softmax and sums (bounds' probabilistic model, LAMBDA times the root-sum-square). Swapped k and
        # v, a missing or doubled scale: O(1) apart
        q64, k64, v64 = (t.asnumpy().astype(np.float64) for t in (q, k, v))
        scores, s_scores = matmul(q64, 0 * q64, k64.transpose(0, 1, 3, 2), 0 * k64.transpose(0, 1, 3, 2))
        weights, s_weights = softmax(scores, s_scores)
        out, s_out = matmul(weights, s_weights, v64, 0 * v64)
        assert_within(unfused, out, LAMBDA * s_out, "unfused attention vs float64")
        assert_within(flash(q, k, v).asnumpy(), out, 2 * U * np.abs(out), "the documented formula")  # cast once
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def test_device_kernels_refused_off_ascend(imagenet_sample, tmp_path):
    from ms_vit import create_model
    with pytest.raises(ValueError, match="run on Ascend only, not on CPU"):
        create_model("vit_ti_16_224", depth=1, device_kernels=True)
    result = run_script("train.py", "--data_dir", imagenet_sample, "--ckpt_save_dir", str(tmp_path),
                        "--device_kernels", *TINY_ARGS)
    assert_clean_error(result, "FlashAttention and the one-operator GELU run on Ascend only, not on CPU")
    result = run_script("train.py", "--data_dir", imagenet_sample, "--ckpt_save_dir", str(tmp_path),
                        "--parallel_optimizer", *TINY_ARGS)
    assert_clean_error(result, "--parallel_optimizer shards the optimizer over the ranks of --distribute")


@pytest.mark.parametrize("drop_path_rate", [0.0, 0.2])
def test_recompute_gives_the_same_gradients(drop_path_rate):
    """set_grad_checkpointing (train.py --recompute): each block's activations recomputed in the backward pass; the
    same gradients, for blocks compiled once (no random ops) and blocks with stochastic depth (same seed)."""
    import mindspore as ms
    from mindspore import nn

    from ms_vit import create_model
    from ms_vit.loss import LabelSmoothingCrossEntropy
    ms.set_context(mode=ms.GRAPH_MODE)
    x = ms.Tensor(np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32))
    y = ms.Tensor(np.array([0, 1, 2, 3], np.int32))
    grads = []
    for recompute in (False, True):
        ms.set_seed(3)
        net = create_model("vit_ti_16_224", num_classes=5, image_size=32, patch_size=8, embed_dim=48, depth=3,
                           num_heads=3, mlp_dim=96, drop_path_rate=drop_path_rate)
        net.set_grad_checkpointing(recompute)
        net.set_train(True)
        loss = nn.WithLossCell(net, LabelSmoothingCrossEntropy(0.1))
        grads.append([g.asnumpy() for g in ms.grad(loss, grad_position=None, weights=net.trainable_params())(x, y)])
    # the same operations on the same values (recomputed, not stored): at most each gradient's float32 bound, twice
    relative = 2 * gradient_relative_bound(net.config, 4)
    for a, b, param in zip(*grads, net.trainable_params()):
        assert_within(a, b, relative * np.abs(b).max(), param.name)
    assert max(np.abs(g).max() for g in grads[0]) > 1e-3
