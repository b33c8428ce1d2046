"""Where a ViT looks: every block's attention weights, and the attention rollout of the class token.

Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", 2020): average each block's
attention over its heads, add the identity for the residual connection, renormalise the rows, and multiply the
blocks' matrices from the first to the last; the class token's row says how much each patch flows into it.
"""
import mindspore as ms
import numpy as np
from mindspore import nn, ops

from ..models.vit import ViT


class AttentionWeights(nn.Cell):
    """The attention weights of every block of a ``ViT``, computed with its own cells.

    Inputs: images (B, C, S, S). Outputs: (depth, B, H, 1 + N, 1 + N) float32, rows summing to 1.
    """

    def __init__(self, net: ViT):
        super().__init__(auto_prefix=False)          # the net keeps its parameter names
        self.net = net

    def construct(self, x):
        x = self.net.embed(x)                                        # (B, 1 + N, D)
        weights = []
        for block in self.net.transformer.layers:
            attention, feed_forward = block[0], block[1]             # ResidualCells: norm + attention, norm + MLP
            weights.append(attention.cell[1].attention_weights(attention.cell[0](x)))   # (B, H, 1 + N, 1 + N)
            x = feed_forward(attention(x))
        return ops.stack(weights)


def attention_weights(net: ViT, images: ms.Tensor) -> np.ndarray:
    """(depth, B, H, 1 + N, 1 + N) attention weights of ``net`` (evaluation mode) for ``images``."""
    net.set_train(False)
    return AttentionWeights(net)(images).asnumpy()


def attention_rollout(weights: np.ndarray) -> np.ndarray:
    """Rollout of one image's attention weights (depth, H, T, T) -> the class token's row over the patches, (T - 1,)
    (sums to at most 1; patches in row-major grid order)."""
    tokens = weights.shape[-1]
    rollout = np.eye(tokens)
    for layer in weights.astype(np.float64):
        mixed = layer.mean(axis=0) + np.eye(tokens)                  # heads averaged, residual added
        mixed /= mixed.sum(axis=-1, keepdims=True)
        rollout = mixed @ rollout
    return rollout[0, 1:]


def as_grid(values: np.ndarray) -> np.ndarray:
    """(..., N) patch values -> (..., g, g)."""
    grid = int(round(np.sqrt(values.shape[-1])))
    return values.reshape(values.shape[:-1] + (grid, grid))
