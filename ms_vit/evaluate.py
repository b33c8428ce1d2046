"""Top-1 / top-5 accuracy and mean cross-entropy over every image of a dataset."""
import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def evaluate(net, dataset) -> dict:
    """Run ``net`` in eval mode over ``dataset`` (batches of images, labels); every image counts, the last
    partial batch too. Returns ``{"top1", "top5"}`` (fractions), ``"loss"`` (mean cross-entropy, no label
    smoothing) and ``"num_images"``."""
    net.set_train(False)
    correct1 = correct5 = 0
    loss_sum, count = 0.0, 0
    for images, labels in dataset.create_tuple_iterator(num_epochs=1, output_numpy=False):
        logits = net(images).asnumpy().astype(np.float64)                  # (B, K)
        labels = labels.asnumpy().astype(np.int64)
        log_probs = np.log(softmax(logits) + 1e-300)
        loss_sum += float(-log_probs[np.arange(len(labels)), labels].sum())
        top5 = np.argsort(-logits, axis=1)[:, :5]
        correct1 += int((top5[:, 0] == labels).sum())
        correct5 += int((top5 == labels[:, None]).any(axis=1).sum())
        count += len(labels)
    if count == 0:
        raise ValueError("the evaluation dataset yielded no images")
    return {"top1": correct1 / count, "top5": correct5 / count, "loss": loss_sum / count, "num_images": count}
