"""Top-1 / top-5 accuracy and mean cross-entropy over every image of a dataset (or of every rank's shard)."""
import numpy as np

import mindspore as ms
from mindspore import ops

from .data import pad_batch


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def evaluate(net, dataset, across_ranks: bool = False) -> dict:
    """Run ``net`` in eval mode over ``dataset`` (batches of images, labels); every image counts, the last
    partial batch too. Returns ``{"top1", "top5"}`` (fractions), ``"loss"`` (mean cross-entropy, no label
    smoothing) and ``"num_images"``.

    A last batch smaller than the first is padded with zeros to the first's size and the padding's outputs
    dropped: in graph mode one compiled graph serves every batch (a second shape costs a second compilation,
    seconds for B/16), and the compile cache (``ms_vit.compile_cache``) finds it by that one shape.

    With ``across_ranks`` (data-parallel training), each rank evaluates its shard and the counts and loss sums
    of all ranks are added up (AllReduce), so every rank returns the figures of the whole dataset."""
    net.set_train(False)
    correct1 = correct5 = count = 0
    loss_sum = 0.0
    batch_size = None
    for images, labels in dataset.create_tuple_iterator(num_epochs=1, output_numpy=False):
        labels = labels.asnumpy().astype(np.int64)
        batch_size = batch_size or len(labels)
        logits = net(pad_batch(images, batch_size)).asnumpy().astype(np.float64)[:len(labels)]   # (B, K)
        log_probs = np.log(softmax(logits) + 1e-300)
        loss_sum += float(-log_probs[np.arange(len(labels)), labels].sum())
        top5 = np.argsort(-logits, axis=1)[:, :5]
        correct1 += int((top5[:, 0] == labels).sum())
        correct5 += int((top5 == labels[:, None]).any(axis=1).sum())
        count += len(labels)
    if across_ranks:
        # Sum over the ranks. One float32 vector (CPU's AllReduce takes float32 only): counts stay exact up to
        # 2 ** 24 images.
        sums = ops.AllReduce()(ms.Tensor([correct1, correct5, count, loss_sum], ms.float32)).asnumpy()
        correct1, correct5, count, loss_sum = int(sums[0]), int(sums[1]), int(sums[2]), float(sums[3])
    if count == 0:
        raise ValueError("the evaluation dataset yielded no images")
    return {"top1": correct1 / count, "top5": correct5 / count, "loss": loss_sum / count, "num_images": count}
