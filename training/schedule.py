"""Learning rates of both phases: linear warm-up, then cosine decay to 5 % of the peak.

Each optimizer parameter group carries its own peak ("peak" key); set_lr writes the step's rate.
A phase whose step count is not fixed yet (UNTIMED: it times its first steps from a wall-time
budget) decays over a nominal length instead.
"""

from __future__ import annotations

import math

UNTIMED = 10 ** 9  # a step count not fixed yet


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def set_lr(opt, step: int, total: int, warmup: int) -> None:
    for g in opt.param_groups:
        g["lr"] = learning_rate(step, total, g["peak"], warmup)
