"""Learning-rate schedule: linear warm-up, then cosine decay, per optimizer step."""
import math

import numpy as np


def cosine_lr(base_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> np.ndarray:
    """Per-step learning rates (float32 array of ``total_steps``).

    Warm-up rises linearly from ``base_lr / warmup_steps`` to ``base_lr`` over ``warmup_steps``; the rest follows
    ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2`` with t going from 0 to 1."""
    warmup = min(max(int(warmup_steps), 0), total_steps)
    lrs = np.empty(total_steps, np.float32)
    for step in range(total_steps):
        if step < warmup:
            lrs[step] = base_lr * (step + 1) / warmup
        else:
            t = (step - warmup) / max(total_steps - warmup, 1)
            lrs[step] = min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    return lrs


def training_schedule(base_lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: float = 0.0,
                      min_lr: float = 0.0, accumulation_steps: int = 1):
    """The schedule of a run whose optimizer steps once every ``accumulation_steps`` steps (timm's: one schedule over
    the optimizer steps, so that k steps of batch B follow the schedule of one step of batch k x B).

    Returns ``(per optimizer step, per step)``: what the optimizer follows, and the rate each step trains at (for
    the progress line and the curves)."""
    k = accumulation_steps
    steps = steps_per_epoch * epochs
    updates = cosine_lr(base_lr, max(steps // k, 1), round(warmup_epochs * steps_per_epoch / k), min_lr)
    per_step = updates[np.minimum(np.arange(steps) // k, len(updates) - 1)]
    return updates, per_step
