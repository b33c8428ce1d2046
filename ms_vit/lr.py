"""Learning-rate schedule: linear warm-up, then cosine decay."""
import math

import numpy as np


def cosine_lr(base_lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: float = 0.0,
              min_lr: float = 0.0) -> np.ndarray:
    """Per-step learning rates (float32 array of ``steps_per_epoch * epochs``).

    Warm-up rises linearly from ``base_lr / warmup_steps`` to ``base_lr`` over ``warmup_epochs``; the rest
    follows ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2`` with t going from 0 to 1."""
    total = steps_per_epoch * epochs
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total)
    lrs = np.empty(total, np.float32)
    for step in range(total):
        if step < warmup:
            lrs[step] = base_lr * (step + 1) / warmup
        else:
            t = (step - warmup) / max(total - warmup, 1)
            lrs[step] = min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    return lrs
