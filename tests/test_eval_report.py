"""eval.py: progress while it runs, per-class figures in the metrics JSON, and --report (worst classes, most-confused
pairs, the confusion matrix picture), against answers computed here image by image."""
import json
import os

import numpy as np
import pytest
from helpers import run_script


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The 800 validation digits of the built-in MNIST dataset, a tiny ViT with random weights (so every class has
    its own top-1 and confusions), evaluated by eval.py --report; and its top-1 prediction for each image, computed
    here from the images one by one."""
    import mindspore as ms

    from dataset_tools.demo import build_mnist
    from ms_vit import create_model, data
    from ms_vit.weights import checkpoint
    tmp = tmp_path_factory.mktemp("report")
    root = str(tmp / "mnist")
    build_mnist(root)
    split = os.path.join(root, "val")
    classes = data.list_classes(split)
    net = create_model("vit_ti_16_224", num_classes=len(classes), image_size=28, patch_size=7, embed_dim=48,
                       depth=2, num_heads=3, mlp_dim=96)
    rng = np.random.default_rng(3)
    for p in net.get_parameters():
        p.set_data(ms.Tensor((p.asnumpy() + rng.standard_normal(p.shape) * 0.3).astype(np.float32)))
    ckpt = str(tmp / "tiny.ckpt")
    names = [f"digit {c}" for c in classes]
    checkpoint.save(net, ckpt, meta={"classes": classes, "class_names": names})
    net.set_train(False)
    files = [(k, os.path.join(split, label, file)) for k, label in enumerate(classes)
             for file in sorted(os.listdir(os.path.join(split, label)))]
    truth = [k for k, _ in files]
    images = np.concatenate([data.load_image(path, net.config).asnumpy() for _, path in files])
    # the same network on the same images in the same batches as eval.py, on this machine: the same logits (a top-1
    # flip would need float32 noise to bridge the smallest top-2 gap, 1.7e-3 here, ~100x the noise)
    predicted = [int(k) for start in range(0, len(images), 100)
                 for k in net(ms.Tensor(images[start:start + 100])).asnumpy().argmax(axis=1)]
    output = str(tmp / "metrics.json")
    result = run_script("eval.py", "--data_dir", root, "--ckpt_path", ckpt, "--output", output, "--report",
                        "--batch_size", "100", "--log_interval", "1e-6")   # a line per batch
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(result=result, metrics=json.load(open(output)), truth=np.array(truth),
                predicted=np.array(predicted), classes=classes, names=names, base=str(tmp / "metrics"))


def test_progress_lines(evaluated):
    lines = [line for line in evaluated["result"].stdout.splitlines() if line.startswith("evaluated ")]
    assert lines[0].startswith("evaluated 100 of 800 images (") and "img/s, ETA " in lines[0]
    assert lines[-1].startswith("evaluated 800 of 800 images")


def test_per_class_figures_are_the_images_answers(evaluated):
    truth, predicted, per_class = evaluated["truth"], evaluated["predicted"], evaluated["metrics"]["per_class"]
    # fractions of 800 (and of each class's count): exact in float64, within U in float32; rel 1e-6 (17 U) is safe
    # and one image more or less (1.25e-3) fails
    assert evaluated["metrics"]["top1"] == pytest.approx(float((truth == predicted).mean()))
    assert len({row["top1"] for row in per_class}) > 5                   # classes that differ: a real check
    assert [row["class"] for row in per_class] == evaluated["classes"]
    for k, row in enumerate(per_class):
        mine = truth == k
        assert row["images"] == int(mine.sum()) and row["name"] == evaluated["names"][k]
        assert row["top1"] == pytest.approx(float((predicted[mine] == k).mean()))


def test_report_names_the_worst_classes_and_the_confused_pairs(evaluated):
    truth, predicted, names = evaluated["truth"], evaluated["predicted"], evaluated["names"]
    report = open(evaluated["base"] + ".report.txt").read()
    assert report in evaluated["result"].stdout
    pairs = {}
    for t, p in zip(truth, predicted):
        if t != p:
            pairs[(t, p)] = pairs.get((t, p), 0) + 1
    most = max(pairs.values())
    lines = report.split("most confused")[1].splitlines()[1:]
    first = lines[0].strip()
    assert any(first == f"{names[t]} -> {names[p]}: {n} ({n / (truth == t).sum():.1%})"
               for (t, p), n in pairs.items() if n == most)
    assert len(lines) == min(10, len(pairs))
    worst = report.split("worst classes")[1].splitlines()[1]
    accuracy = {k: float((predicted[truth == k] == k).mean()) for k in set(truth)}
    k = min(accuracy, key=lambda c: (accuracy[c], -(truth == c).sum()))
    assert worst.strip().startswith(f"{accuracy[k]:.3f}  {(truth == k).sum():>5}  {names[k]} [")
    assert os.path.getsize(evaluated["base"] + ".confusion.png") > 5000
