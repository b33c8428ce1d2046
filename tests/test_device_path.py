"""The Ascend/GPU training path, run here: MindSpore's dataset-sink cadence replayed on CPU (ms_vit.training.sink) with
train.py
as a user runs it, the float16 overflow stop, the choice of sink size, the device kernels' checkable parts, the
device line, recomputation."""
import json
import os
import re
import shutil
import signal

import numpy as np
import pytest
from bounds import LAMBDA, U, assert_within, gradient_relative_bound, matmul, softmax
from helpers import TINY_ARGS, assert_clean_error, run_script
from test_faults import signal_at, start_train, weights

# 20 photos, batch 2: 10 steps per epoch; no augmentation, no stochastic depth: a function of the seed
RUN = ["--batch_size", "2", "--no_augment", "--drop_path_rate", "0", "--lr", "1e-2", "--warmup_epochs", "1",
       *TINY_ARGS]


def train(data, out, *args):
    return run_script("train.py", "--data_dir", data, "--ckpt_save_dir", str(out), *RUN, *args)


def progress_steps(stdout):
    return [line.split()[3] for line in stdout.splitlines() if re.match(r"epoch \d+/\d+ step ", line)]


def test_plan_sinks_keeps_whole_sinks_near_the_requested_size():
    from ms_vit.training.sink import plan_sinks, resumed_sink_size
    assert plan_sinks(100, 1251) == (96, 1248)          # ImageNet, 8 x 128: 13 sinks, 3 batches left out (was 9)
    assert plan_sinks(100, 2502) == (96, 2496)          # 8 x 64 (was 18)
    assert plan_sinks(100, 10007) == (99, 9999)         # a prime (was 1)
    assert plan_sinks(100, 1000) == (100, 1000) and plan_sinks(4, 10) == (2, 10) and plan_sinks(1, 10) == (1, 10)
    assert plan_sinks(5, 19) == (4, 16) and plan_sinks(50, 19) == (19, 19)
    for steps in range(1, 400):
        for requested in range(1, 60):
            size, kept = plan_sinks(requested, steps)
            wanted = min(requested, steps)
            assert wanted // 2 <= size <= wanted and kept % size == 0, (requested, steps)
            assert 0 <= steps - kept < kept // size, (requested, steps)         # fewer left out than sinks
    assert resumed_sink_size(5, 20, done_steps=30) == 5                       # resumed at step 10 of 20
    assert resumed_sink_size(5, 20, done_steps=23) == 1                       # at step 3: step by step
    assert resumed_sink_size(4, 16, done_steps=22) == 2


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
    from ms_vit.weights import checkpoint
    _, meta = checkpoint.read(str(tmp_path / "sinks" / "vit-2_10.ckpt"))
    assert meta["global_step"] == 20 and meta["epoch"] == 2
    a, b = weights(tmp_path / "steps" / "vit-2_10.ckpt"), weights(tmp_path / "sinks" / "vit-2_10.ckpt")
    assert max(np.abs(a[k] - b[k]).max() for k in a) == 0.0
    assert json.load(open(tmp_path / "steps" / "val_history.json")) == \
        json.load(open(tmp_path / "sinks" / "val_history.json"))


@pytest.fixture(scope="module")
def prime_sample(imagenet_sample, tmp_path_factory):
    """The photos with 19 training images: at batch 1, a prime number of steps per epoch."""
    root = tmp_path_factory.mktemp("prime") / "data"
    shutil.copytree(imagenet_sample, root)
    os.remove(sorted(str(p) for p in (root / "train").glob("*/*"))[-1])
    return str(root)


def test_sinks_at_a_prime_number_of_steps_and_sigterm_resume(prime_sample, tmp_path):
    """19 steps per epoch, --sink_size 5: sinks of 4 and epochs of the first 16 batches of each shuffle (a divisor
    sink would have been 1); progress, history and checkpoints at sink boundaries and epoch ends; SIGTERM during a
    sink stops at its boundary and --resume auto ends with the straight run's weights."""
    one = ["--batch_size", "1", "--log_interval", "1", "--epoch_size", "2", "--sink_size", "5"]
    straight = run_script("train.py", "--data_dir", prime_sample, "--ckpt_save_dir", str(tmp_path / "straight"),
                          *RUN, *one)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert ("16 steps of batch 1 per epoch, sinks of 4 steps (the last 3 batches of each epoch's shuffle left out"
            in straight.stdout)
    assert progress_steps(straight.stdout) == ["4/16", "8/16", "12/16", "16/16"] * 2
    assert [h["step"] for h in json.load(open(tmp_path / "straight" / "train_history.json"))] == list(range(4, 33, 4))
    assert [h["epoch"] for h in json.load(open(tmp_path / "straight" / "val_history.json"))] == [1, 2]
    from ms_vit.weights import checkpoint
    assert checkpoint.read(str(tmp_path / "straight" / "vit-2_16.ckpt"))[1]["global_step"] == 32
    process = start_train(prime_sample, tmp_path / "run", *one)
    out, err = signal_at(process, "epoch 2/2 step 4/16", signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped = [line for line in err.splitlines() if line.startswith("interrupted by SIGINT/SIGTERM after epoch 2 ")]
    assert len(stopped) == 1, err[-3000:]
    path = stopped[0].split("resumable checkpoint ")[1].split(";")[0]
    step = int(re.search(r"vit-2_(\d+)\.ckpt$", path).group(1))
    assert step in (8, 12, 16)                                          # a sink boundary after the signal
    assert checkpoint.read(path)[1]["global_step"] == 16 + step
    resumed = run_script("train.py", "--data_dir", prime_sample, "--ckpt_save_dir", str(tmp_path / "run"), *RUN,
                         *one, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "sinks of 4 steps" in resumed.stdout
    assert f"epochs 2..2 (from step {step + 1} of epoch 2)" in resumed.stdout or step == 16
    a, b = weights(tmp_path / "straight" / "vit-2_16.ckpt"), weights(tmp_path / "run" / "vit-2_16.ckpt")
    assert max(np.abs(a[k] - b[k]).max() for k in a) == 0.0          # the same operations on the same data
    assert [h["step"] for h in json.load(open(tmp_path / "run" / "train_history.json"))] == list(range(4, 33, 4))


@pytest.mark.parametrize("look", [4, 5])
def test_float16_steps_that_keep_overflowing_stop_the_run(imagenet_sample, tmp_path, look):
    """Every float16 step overflows (a head too large for float16): the loss scale halves to its floor and the run
    stops after 32 skipped steps in a row, with one line naming the 32nd step, also when it falls inside a sink
    (look 5: sinks of 5; the host looks at step 35); those weights are not saved."""
    import mindspore as ms

    from ms_vit import create_model
    from ms_vit.weights import checkpoint
    ms.set_context(mode=ms.GRAPH_MODE)
    net = create_model("vit_ti_16_224", num_classes=19, image_size=32, patch_size=8, embed_dim=48, depth=2,
                       num_heads=3, mlp_dim=96, fused_kernels=False)
    net.dense.weight.set_data(ms.Tensor(net.dense.weight.asnumpy() * 1e6))   # float16 logits: inf
    start = tmp_path / "huge_head.ckpt"
    checkpoint.save(net, str(start))
    result = run_script("train.py", "--data_dir", imagenet_sample, "--ckpt_save_dir", str(tmp_path / "run"),
                        "--batch_size", "1", "--epoch_size", "3", "--amp_level", "O2", "--pretrained", str(start),
                        "--log_interval", "4", *(["--sink_size", "5"] if look == 5 else []), *TINY_ARGS)
    assert result.returncode == 1, (result.stdout[-2000:], result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors[0].startswith("error: 32 steps in a row overflowed in float16 up to epoch 2 step 12/20")
    assert "vit-1_20.ckpt" in errors[0] and "--amp_level O0" in errors[0]
    assert f"skipped {look} overflowing steps (loss scale 1)" in result.stdout
    assert sorted(p for p in os.listdir(tmp_path / "run") if p.startswith("vit-")) == ["vit-1_20.ckpt"]


def test_device_line_and_a_missing_backend(imagenet_sample, tmp_path):
    from ms_vit import device
    notes = [device._missing_reason(d) for d in ("Ascend", "GPU")]
    assert notes[0].startswith("Ascend unavailable (") and "CANN" in notes[0]
    assert notes[1].startswith("GPU unavailable (") and "CUDA" in notes[1]
    result = run_script("train.py", "--data_dir", imagenet_sample, "--ckpt_save_dir", str(tmp_path),
                        "--device_target", "Ascend", *TINY_ARGS)
    assert_clean_error(result, "--device_target Ascend: Ascend unavailable (", "the available device is CPU")


# The training graphs tests/graph_probe.py compiles (one block, AMP as train.py applies it, each block recomputed),
# with MindSpore's operators and with the device kernels (built as on an Atlas A2 Ascend; their compilation stops in
# the CPU backend, after the front end wrote the graph the device would run).
GRAPH_CASES = {(level, dtype, kernels): f"{level}:{dtype}:recompute" + (":device" if kernels == "device" else "")
               for kernels in ("ops", "device") for level in ("O0", "O1", "O2", "O3")
               for dtype in (("float16", "bfloat16") if kernels == "device" and level != "O0" else ("float16",))}
GRAPH_CASES[("O0", "float32", "fused")] = "O0:float32:recompute:fused"      # the CPU kernels (float32 only)
# the block's operators that recomputation must not keep (the activations: LayerNorm, the matrix products, the
# softmax or FlashAttention, GELU, and every cast AMP adds)
RECOMPUTED = {"Cast", "LayerNorm", "MatMul", "BatchMatMul", "Softmax", "FlashAttentionScore", "GeluExt", "Erf",
              "Custom"}


def block_nodes(ir_text: str):
    """``(operator, recomputed)`` of each forward node inside a transformer block of a compiled graph's IR (the node's
    scope is two lines below it; the recompute pass marks the nodes it recomputes ``recompute: Bool(1)``)."""
    lines, nodes = ir_text.splitlines(), []
    for i, line in enumerate(lines):
        match = re.search(r"= (?:PrimFunc_)?(\w+)\(", line)
        scope = next((text for text in lines[i + 1:i + 4] if "Fullname with scope" in text), "")
        if match and "forward_node_name" not in line and "/layers-SequentialCell/" in scope \
                and "Gradients" not in scope:
            nodes.append((match.group(1), "recompute: Bool(1)" in line))
    return nodes


@pytest.fixture(scope="module")
def device_graphs(tmp_path_factory):
    """Per case: the forward operators' input dtypes and the block's nodes."""
    from test_amp import forward_input_dtypes
    out = tmp_path_factory.mktemp("graphs")
    cases = list(GRAPH_CASES)
    result = run_script(os.path.join("tests", "graph_probe.py"), str(out), *(GRAPH_CASES[c] for c in cases),
                        env={"MS_DEV_DUMP_IR_PASSES": "validate"})            # the validated IR only
    assert result.returncode == 0, result.stderr[-3000:]
    found = {}
    for i, case in enumerate(cases):
        (ir,) = (out / str(i)).glob("*_validate_*.ir")
        text = ir.read_text()
        found[case] = forward_input_dtypes(text), block_nodes(text)
    return found


def test_flash_attention_and_the_one_operator_gelu_are_in_the_device_graph_at_o1_to_o3(device_graphs):
    """--device_kernels: FlashAttention takes the attention at O1 (its inputs were cast back to float32 there and
    the unfused path ran), O2 and O3, in float16 or bfloat16; the exact GELU is one GeluExt operator at every level
    (``ops.gelu`` built the erf composite); at O0 (float32, which FlashAttention does not take) the unfused
    attention."""
    for (level, dtype, kernels), (dtypes, _) in device_graphs.items():
        if kernels != "device":
            continue
        low = {"float16": "Float16", "bfloat16": "BFloat16"}[dtype]
        assert "GeluExt" in dtypes and "Erf" not in dtypes, (level, dtype)
        if level == "O0":
            assert "FlashAttentionScore" not in dtypes and dtypes["Softmax"] == {"Float32"}
        else:
            assert dtypes["FlashAttentionScore"] == {low}, (level, dtype)
            assert "Softmax" not in dtypes and "BatchMatMul" not in dtypes, (level, dtype)


def test_recompute_covers_every_activation_of_a_block_at_every_amp_level(device_graphs):
    """train.py --recompute (``amp.apply(recompute=True)``): every activation of each block is recomputed, the casts
    AMP adds included (set before AMP, the casts it wrapped around LayerNorm at O2 kept their outputs), and on the
    fused CPU kernels every kernel (what that saves: tests/test_kernels.py, the training peak)."""
    for case, (_, nodes) in device_graphs.items():
        activations = [(op, recomputed) for op, recomputed in nodes if op in RECOMPUTED]
        assert len(activations) > 10, case
        assert [op for op, recomputed in activations if not recomputed] == [], case


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

    from ms_vit.models.layers import FlashAttention
    from ms_vit.models.vit import Attention
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


def test_device_kernels_refused_where_there_is_no_flash_attention(imagenet_sample, tmp_path):
    """Off Ascend, and on the Ascend SoCs MindSpore 2.10 knows without FlashAttention (910A, 310P, 310B)."""
    from ms_vit import create_model
    from ms_vit.models import layers
    for soc in ("ascend910b", "ascend910_93", "ascend950"):                     # Atlas A2, A3 and later
        layers.check_device_kernels("Ascend", soc)
    refused = [("Ascend", "ascend910", "Ascend (ascend910)"), ("Ascend", "ascend310p", "Ascend (ascend310p)"),
               ("Ascend", "ascend310b", "Ascend (ascend310b)"), ("Ascend", "", "Ascend (SoC unknown)"),
               ("GPU", "", "GPU"), ("CPU", "", "CPU")]
    for target, soc, where in refused:
        with pytest.raises(ValueError, match=re.escape(f"Ascend 910B and later (Atlas A2/A3) only, not on {where}")):
            layers.check_device_kernels(target, soc)
    with pytest.raises(ValueError, match="only, not on CPU"):
        create_model("vit_ti_16_224", depth=1, device_kernels=True)
    result = run_script("train.py", "--data_dir", imagenet_sample, "--ckpt_save_dir", str(tmp_path),
                        "--device_kernels", *TINY_ARGS)
    assert_clean_error(result, "FlashAttention and the one-operator GELU run on Ascend 910B and later", "not on CPU")


@pytest.mark.parametrize("drop_path_rate", [0.0, 0.2])
def test_recompute_gives_the_same_gradients(drop_path_rate):
    """set_grad_checkpointing (train.py --recompute): each block's activations recomputed in the backward pass; the
    same gradients, for blocks compiled once (no random ops) and blocks with stochastic depth (same seed)."""
    import mindspore as ms
    from mindspore import nn

    from ms_vit import create_model
    from ms_vit.training.loss import LabelSmoothingCrossEntropy
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


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_stochastic_depth_drops_at_its_rate_in_every_dtype(dtype):
    """Block 1 of 12 at drop_path_rate 0.1 drops p = 0.1 / 11 of the samples: the keep mask is drawn in float32 (a
    bfloat16 draw, ``keep_prob + U[0, 1)`` rounded to 8 bits, dropped 0.58 % instead of 0.91 %)."""
    import mindspore as ms

    from ms_vit.models.vit import DropPath
    ms.set_context(mode=ms.GRAPH_MODE)
    n, p = 1_000_000, 0.1 / 11
    drop_path = DropPath(p)
    drop_path.set_train(True)
    out = drop_path(ms.Tensor(np.ones((n, 1), np.float32)).astype(getattr(ms, dtype))).astype(ms.float32).asnumpy()
    kept = out[out != 0]
    # the drop count is Binomial(n, p): within 5 standard deviations (a false alarm once in ~2 million runs)
    assert abs((out == 0).mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    # the kept samples are scaled by 1 / (1 - p) rounded once to the dtype (relative half-ulp: 2^-24, 2^-11, 2^-8)
    half_ulp = {"float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}[dtype]
    assert np.abs(kept / (1 / (1 - p)) - 1).max() <= half_ulp
