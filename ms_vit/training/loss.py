"""Label-smoothed cross-entropy."""
import mindspore as ms
from mindspore import nn, ops


class LabelSmoothingCrossEntropy(nn.Cell):
    """Cross-entropy against ``(1 - smoothing) * one_hot(label) + smoothing / K``, averaged over the batch.

    Computed from log-softmax in float32 (also under AMP O2).

    Args:
        smoothing: label smoothing in [0, 1).

    Inputs: logits (B, K) and integer labels (B,). Outputs: the scalar mean loss.
    """

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), not {smoothing}")
        self.smoothing = smoothing

    def construct(self, logits, labels):
        log_probs = ops.log_softmax(logits.astype(ms.float32), axis=-1)             # (B, K)
        nll = -ops.gather_elements(log_probs, 1, labels.astype(ms.int32).reshape(-1, 1)).squeeze(1)
        smooth = -log_probs.mean(axis=-1)
        return ((1.0 - self.smoothing) * nll + self.smoothing * smooth).mean()


class SoftTargetCrossEntropy(nn.Cell):
    """Cross-entropy against soft targets (Mixup/CutMix, with label smoothing folded in), averaged over the batch:
    ``mean_b(sum_k -target[b, k] * log_softmax(logits)[b, k])``, in float32.

    Inputs: logits (B, K) and targets (B, K) summing to 1 per row. Outputs: the scalar mean loss.
    """

    def construct(self, logits, targets):
        log_probs = ops.log_softmax(logits.astype(ms.float32), axis=-1)             # (B, K)
        return (-targets.astype(ms.float32) * log_probs).sum(axis=-1).mean()
