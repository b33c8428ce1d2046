"""What an evaluation says class by class: per-class top-1, the worst classes, the most-confused pairs, and the
confusion matrix as a picture (``eval.py --report``), from ``evaluate``'s confusion matrix."""
from typing import List, Sequence

import numpy as np


def per_class(confusion: np.ndarray, classes: Sequence[str], names: Sequence[str]) -> List[dict]:
    """``{"class", "name", "images", "top1"}`` for every class (top-1 None for a class without images)."""
    images = confusion.sum(axis=1)
    return [{"class": classes[k], "name": names[k], "images": int(images[k]),
             "top1": float(confusion[k, k] / images[k]) if images[k] else None} for k in range(len(classes))]


def worst_classes(confusion: np.ndarray, classes, names, count: int = 10) -> List[dict]:
    """The classes with the lowest top-1 (of those with images), each with what it was most often taken for."""
    rows = [row for row in per_class(confusion, classes, names) if row["images"]]
    rows.sort(key=lambda row: (row["top1"], -row["images"], row["class"]))
    for row in rows[:count]:
        k = list(classes).index(row["class"])
        wrong = confusion[k].copy()
        wrong[k] = 0
        j = int(wrong.argmax())
        row["mistaken_for"] = {"class": classes[j], "name": names[j], "images": int(wrong[j])} if wrong[j] else None
    return rows[:count]


def confused_pairs(confusion: np.ndarray, classes, names, count: int = 10) -> List[dict]:
    """The (true, predicted) pairs of different classes with the most images, largest first."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:count]
    images = confusion.sum(axis=1)
    pairs = []
    for flat in order:
        i, j = divmod(int(flat), confusion.shape[1])
        if off[i, j] == 0:
            break
        pairs.append({"true": classes[i], "true_name": names[i], "predicted": classes[j], "predicted_name": names[j],
                      "images": int(off[i, j]), "share": float(off[i, j] / images[i])})
    return pairs


def text(metrics: dict, worst: List[dict], pairs: List[dict]) -> str:
    """The report as plain text (also what eval.py prints)."""
    lines = [f"top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  loss {metrics['loss']:.4f}  "
             f"({metrics['num_images']:,} images)", "", "worst classes (top-1, images; most often taken for):"]
    for row in worst:
        mistaken = row.get("mistaken_for")
        taken = f"; {mistaken['name']} ({mistaken['images']})" if mistaken else ""
        lines.append(f"  {row['top1']:.3f}  {row['images']:>5}  {row['name']} [{row['class']}]{taken}")
    lines += ["", "most confused (true -> predicted: images, share of the true class):"]
    lines += [f"  {p['true_name']} -> {p['predicted_name']}: {p['images']} ({p['share']:.1%})" for p in pairs]
    return "\n".join(lines)


def plot_confusion(confusion: np.ndarray, names: Sequence[str], path: str) -> None:
    """The row-normalised confusion matrix as a picture (for up to ~100 classes)."""
    from ..pictures.plots import _save, plt
    rows = confusion.sum(axis=1, keepdims=True)
    shares = confusion / np.maximum(rows, 1)
    size = max(6.0, 0.18 * len(names) + 2)
    figure, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(names))
    ax.set_xticks(ticks, [n.split(",")[0][:18] for n in names], rotation=90, fontsize=7)
    ax.set_yticks(ticks, [n.split(",")[0][:18] for n in names], fontsize=7)
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true class")
    figure.colorbar(image, ax=ax, fraction=0.046, label="share of the true class's images")
    _save(figure, path)
