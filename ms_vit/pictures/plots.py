"""The pictures: training curves, attention maps, top-k bars (matplotlib, written as PNG files)."""
from typing import List, Sequence

import matplotlib
import numpy as np
from PIL import Image

matplotlib.use("Agg")                       # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ..files import write_atomically  # noqa: E402


def _save(figure, path: str) -> None:
    write_atomically(path, lambda tmp: figure.savefig(tmp, dpi=100, bbox_inches="tight"))
    plt.close(figure)


def smooth(values: Sequence[float], weight: float = 0.6) -> np.ndarray:
    """Exponential moving average, as TensorBoard's smoothing (bias-corrected)."""
    out, avg = [], 0.0
    for i, value in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * value
        out.append(avg / (1 - weight ** i))
    return np.array(out)


def plot_curves(train_history: List[dict], val_history: List[dict], path: str) -> None:
    """Training loss per logged step (raw and smoothed) with validation loss per epoch; top-1/top-5 per epoch
    (EMA's too where recorded); learning rate per step."""
    figure, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(15, 4))
    if train_history:
        steps = [h["step"] for h in train_history]
        losses = [h["loss"] for h in train_history]
        loss_ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=1)
        loss_ax.plot(steps, smooth(losses), color="tab:blue", label="training (smoothed)")
        lr_ax.plot(steps, [h["lr"] for h in train_history], color="tab:green")
    if val_history:
        epochs = [h["epoch"] for h in val_history]
        at_step = [(h["step"], h["loss"]) for h in val_history if "step" in h]       # step: end of the epoch
        if at_step:
            loss_ax.plot(*zip(*at_step), "o-", color="tab:orange", label="validation")
        acc_ax.plot(epochs, [100 * h["top1"] for h in val_history], "o-", label="top-1")
        acc_ax.plot(epochs, [100 * h["top5"] for h in val_history], "o-", label="top-5")
        if any("ema_top1" in h for h in val_history):
            ema = [(h["epoch"], 100 * h["ema_top1"]) for h in val_history if "ema_top1" in h]
            acc_ax.plot(*zip(*ema), "s--", label="top-1 (EMA)")
        best = max(val_history, key=lambda h: h["top1"])
        acc_ax.set_title(f"validation accuracy (best top-1 {100 * best['top1']:.2f} %, epoch {best['epoch']})")
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="%")
    lr_ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
    for ax in (loss_ax, acc_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        ax.grid(alpha=0.3)
    lr_ax.grid(alpha=0.3)
    figure.tight_layout()
    _save(figure, path)


def plot_attention(view: Image.Image, rollout: np.ndarray, last_layer: np.ndarray, label: str, path: str) -> None:
    """The image as the model sees it, the class token's attention rollout over it, and the last block's per-head
    attention of the class token. ``rollout`` (g, g); ``last_layer`` (H, g, g)."""
    heads = last_layer.shape[0]
    figure, axes = plt.subplots(1, 2 + heads, figsize=(3 * (2 + heads), 3.3))
    size = view.size[0]
    axes[0].imshow(view)
    axes[0].set_title(label, fontsize=9)
    axes[1].imshow(view)
    axes[1].imshow(_upsample(rollout, size), cmap="jet", alpha=0.5)
    axes[1].set_title("attention rollout", fontsize=9)
    for h in range(heads):
        axes[2 + h].imshow(view)
        axes[2 + h].imshow(_upsample(last_layer[h], size), cmap="inferno", alpha=0.6)
        axes[2 + h].set_title(f"last block, head {h + 1}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    _save(figure, path)


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """A (g, g) map scaled to [0, 1] and resized (bilinear) to the image's side."""
    grid = (grid - grid.min()) / max(float(grid.max() - grid.min()), 1e-12)
    return np.asarray(Image.fromarray((grid * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)) / 255.0


def plot_topk(view: Image.Image, names: Sequence[str], probs: Sequence[float], path: str) -> None:
    """The image beside a bar chart of its top-k classes."""
    figure, (image_ax, bar_ax) = plt.subplots(1, 2, figsize=(9, 3.5), gridspec_kw={"width_ratios": [1, 1.4]})
    image_ax.imshow(view)
    image_ax.axis("off")
    positions = np.arange(len(names))[::-1]
    bar_ax.barh(positions, [100 * p for p in probs], color=["tab:blue"] + ["tab:gray"] * (len(names) - 1))
    bar_ax.set_yticks(positions, names)
    bar_ax.set_xlim(0, 100)
    bar_ax.set_xlabel("probability (%)")
    for y, p in zip(positions, probs):
        bar_ax.text(min(100 * p + 1, 88), y, f"{100 * p:.1f} %", va="center", fontsize=9)
    _save(figure, path)
