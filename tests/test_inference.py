"""The first answer: infer.py's mode choice and batching, the graph compile cache's keys, eval's padded last batch,
and create_model skipping the random initialisation a checkpoint overwrites."""
import glob
import os

import numpy as np
import pytest
from bounds import assert_within, gamma, parameters, vit_forward
from helpers import run_script


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from ms_vit import create_model
    from ms_vit.weights import checkpoint
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")
    net = create_model("vit_ti_16_224", num_classes=1000, image_size=32, patch_size=8, embed_dim=48, depth=2,
                       num_heads=3, mlp_dim=96)
    checkpoint.save(net, path)
    return path


def predictions(stdout):
    """image -> [(name, probability)] as infer.py prints them."""
    out, image = {}, None
    for line in stdout.splitlines():
        if not line.startswith("  "):
            image = line
            out[image] = []
        elif line.lstrip()[0].isdigit():
            name, prob = line.strip().split(". ", 1)[1].rsplit("  ", 1)
            out[image].append((name, float(prob)))
    return out


def test_infer_modes_and_batches_agree_and_the_cache_is_keyed_by_shape(tiny_ckpt, imagenet_sample, tmp_path):
    images = sorted(glob.glob(os.path.join(imagenet_sample, "val", "*", "*")))[:5]
    env = {"MS_VIT_CACHE": str(tmp_path / "cache")}
    one_by_one = {}
    for image in images:                                      # auto: one image is one batch, PyNative
        result = run_script("infer.py", "--ckpt_path", tiny_ckpt, image, "--output_dir", str(tmp_path / "a"), env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        one_by_one.update(predictions(result.stdout))
    assert not os.path.exists(tmp_path / "cache" / "graphs")   # nothing compiled
    runs = []
    for batch in ("2", "2", "3"):                             # auto: 5 images in batches of 2 or 3, graph mode
        result = run_script("infer.py", "--ckpt_path", tiny_ckpt, *images, "--batch_size", batch,
                            "--output_dir", str(tmp_path / "b"), env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        runs.append(predictions(result.stdout))
    for run in runs:                                          # the padded last batch, the cached graph: same answers
        assert list(run) == images
        for image in images:
            assert [n for n, _ in run[image]] == [n for n, _ in one_by_one[image]]
            # printed to 4 decimals: 1e-4 apart when the two straddle a rounding boundary; the probabilities
            # themselves differ by < 1e-6 (float32 logits of two batch sizes, softmax in float64)
            assert [p for _, p in run[image]] == pytest.approx([p for _, p in one_by_one[image]], abs=1.5e-4)
    assert len(os.listdir(tmp_path / "cache" / "graphs")) == 2  # one graph per input shape, reused by the 2nd run
    assert len(os.listdir(tmp_path / "b")) == 5


def test_graph_key_changes_with_everything_the_graph_depends_on():
    from ms_vit import create_model
    from ms_vit.deploy.compile_cache import graph_key
    small = dict(num_classes=10, image_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_dim=96)
    net = create_model("vit_ti_16_224", **small)
    key = graph_key(net, (2, 3, 32, 32))
    assert key == graph_key(create_model("vit_ti_16_224", **small), (2, 3, 32, 32))
    assert key != graph_key(net, (3, 3, 32, 32))
    assert key != graph_key(create_model("vit_ti_16_224", **dict(small, depth=3)), (2, 3, 32, 32))
    assert key != graph_key(create_model("vit_ti_16_224", fused_kernels=not net.fused_kernels, **small),
                            (2, 3, 32, 32))


def test_evaluate_pads_the_last_batch_and_counts_only_real_images(imagenet_sample):
    import mindspore as ms

    from ms_vit import create_model, data
    from ms_vit.evaluation.evaluate import evaluate
    ms.set_context(mode=ms.GRAPH_MODE)
    net = create_model("vit_ti_16_224", num_classes=19, image_size=32, patch_size=8, embed_dim=48, depth=2,
                       num_heads=3, mlp_dim=96)
    split = os.path.join(imagenet_sample, "val")
    classes = data.list_classes(split)
    whole = evaluate(net, data.create_dataset(split, classes, net.config, 20, training=False))
    padded = evaluate(net, data.create_dataset(split, classes, net.config, 8, training=False))   # 8 + 8 + 4
    assert padded["num_images"] == whole["num_images"] == 20
    assert padded["top1"] == whole["top1"] and padded["top5"] == whole["top5"]
    # each image's logits in two batch shapes: two float32 evaluations (vit_forward's bound each); a cross-entropy
    # moves by at most twice its logits' largest move; the mean of 20 in float32: gamma(20). A padding image
    # counted (1/20 of a loss, 5 %) fails
    images = np.concatenate([b[0] for b in data.create_dataset(split, classes, net.config, 20, training=False)
                             .create_tuple_iterator(output_numpy=True)])
    logit_bound = 2 * vit_forward(net.config, parameters(net), images)[1].max(1)
    assert_within(padded["loss"], whole["loss"], 2 * logit_bound.mean() + 2 * gamma(20) * whole["loss"], "loss")


def test_checkpoint_fills_the_model_without_random_initialisation(tiny_ckpt):
    """create_model builds a model whose checkpoint holds every weight without drawing random weights first; the
    result equals loading the checkpoint into a randomly initialised model."""
    import mindspore as ms

    from ms_vit import create_model
    from ms_vit.models.vit import ViT, ViTConfig
    from ms_vit.weights import checkpoint
    params, meta = checkpoint.read(tiny_ckpt)
    reference = ViT(ViTConfig.from_dict(meta["config"]))
    checkpoint.load_into(reference, params)
    net = create_model(checkpoint_path=tiny_ckpt)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    for model in (net, reference):
        model.set_train(False)
    assert np.abs(net(x).asnumpy() - reference(x).asnumpy()).max() == 0
    finetune = create_model(checkpoint_path=tiny_ckpt, num_classes=7)     # a new head: initialised as usual
    head = finetune.dense.weight.asnumpy()
    assert head.shape == (7, 48) and 0.005 < head.std() < 0.05      # 0.02; the std of 336 draws: sd 8e-4
