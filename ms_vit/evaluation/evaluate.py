"""Top-1 / top-5 accuracy, mean cross-entropy and the confusion matrix over every image of a dataset (or of every
rank's shard), with a progress line while it runs."""
from typing import Callable, Optional

import mindspore as ms
import numpy as np
from mindspore import ops

from ..data import pad_batch
from ..timing import Ticker, format_duration


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def evaluate(net, dataset, across_ranks: bool = False, say: Optional[Callable[[str], None]] = None,
             total: Optional[int] = None, every: float = 10.0) -> dict:
    """Run ``net`` in eval mode over ``dataset`` (batches of images, labels); every image counts, the last
    partial batch too. Returns ``{"top1", "top5"}`` (fractions), ``"loss"`` (mean cross-entropy, no label
    smoothing), ``"num_images"`` and ``"confusion"`` (K x K image counts, true class by row, top-1 prediction by
    column; numpy, for ``ms_vit.evaluation.report``).

    ``say`` hears, every ``every`` seconds, how far it is: ``evaluated 12,800 of 50,000 images (25.3 img/s, ETA
    0:31:05)`` (``total``: the image count, for the ETA; under ``across_ranks``, this rank's share).

    A last batch smaller than the first is padded with zeros to the first's size and the padding's outputs
    dropped: in graph mode one compiled graph serves every batch (a second shape costs a second compilation,
    seconds for B/16), and the compile cache (``ms_vit.deploy.compile_cache``) finds it by that one shape.

    With ``across_ranks`` (data-parallel training), each rank evaluates its shard and the counts, loss sums and
    confusion matrices of all ranks are added up (AllReduce), so every rank returns the figures of the whole
    dataset."""
    net.set_train(False)
    correct5 = count = 0
    loss_sum = 0.0
    confusion = None
    batch_size = None
    ticker = Ticker(every)
    for images, labels in dataset.create_tuple_iterator(num_epochs=1, output_numpy=False):
        labels = labels.asnumpy().astype(np.int64)
        batch_size = batch_size or len(labels)
        logits = net(pad_batch(images, batch_size)).asnumpy().astype(np.float64)[:len(labels)]   # (B, K)
        if confusion is None:
            confusion = np.zeros((logits.shape[1], logits.shape[1]), np.int64)
        log_probs = np.log(softmax(logits) + 1e-300)
        loss_sum += float(-log_probs[np.arange(len(labels)), labels].sum())
        top5 = np.argsort(-logits, axis=1)[:, :5]
        np.add.at(confusion, (labels, top5[:, 0]), 1)
        correct5 += int((top5 == labels[:, None]).any(axis=1).sum())
        count += len(labels)
        if say and ticker.due():
            rate = count / ticker.elapsed()
            left = f", ETA {format_duration((total - count) / rate)}" if total else ""
            say(f"evaluated {count:,}{f' of {total:,}' if total else ''} images ({rate:.1f} img/s{left})")
    if across_ranks:
        # Sum over the ranks. float32 (CPU's AllReduce takes float32 only): counts stay exact up to 2 ** 24 images.
        sums = ops.AllReduce()(ms.Tensor([correct5, count, loss_sum], ms.float32)).asnumpy()
        correct5, count, loss_sum = int(sums[0]), int(sums[1]), float(sums[2])
        confusion = ops.AllReduce()(ms.Tensor(confusion.astype(np.float32))).asnumpy().round().astype(np.int64)
    if count == 0:
        raise ValueError("the evaluation dataset yielded no images")
    return {"top1": int(np.trace(confusion)) / count, "top5": correct5 / count, "loss": loss_sum / count,
            "num_images": count, "confusion": confusion}
