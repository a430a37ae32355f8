"""Per-epoch schedules: MSL step weights, derivative order (DA), cosine meta learning rate."""

from __future__ import annotations

import math

from mamlpp.config import Config


def msl_weights(steps: int, epoch: int, annealing_epochs: int, enabled: bool) -> list[float]:
    """Importance weights v_0..v_{K-1} of the per-step target losses (MSL).

    Start uniform (1/K); the first K-1 decay linearly to a floor of 0.03/K while the last grows
    to 1 - (K-1)*0.03/K; from `annealing_epochs` on (or without MSL) only the last step counts.
    As the authors' code (few_shot_learning_system.py:90-101 for the weights, :232 and :239-244
    for the last step alone from epoch E on, at 86964701).
    """
    k, e, big_e = steps, epoch, annealing_epochs
    if not enabled or e >= big_e:
        return [0.0] * (k - 1) + [1.0]
    early = max(1.0 / k - e / (k * big_e), 0.03 / k)
    last = min(1.0 / k + e * (k - 1) / (k * big_e), 1.0 - (k - 1) * 0.03 / k)
    return [early] * (k - 1) + [last]


def use_second_order(config: Config, epoch: int) -> bool:
    """DA: 'annealed' trains first order for epochs 0..E-1 (E = `first_order_epochs`) and second
    order from epoch E on; with `inner.da_strict_after` first order through epoch E and second
    order only after it (the authors' code, few_shot_learning_system.py:303-305 at 86964701)."""
    order = config.inner.order
    if order == "annealed":
        e = config.inner.first_order_epochs
        return epoch > e if config.inner.da_strict_after else epoch >= e
    return order == "second"


def meta_lr(config: Config, epoch: int) -> float:
    """CA: cosine from `outer.lr` to `outer.min_lr` over `outer.cosine_epochs` (default: the
    run's epochs), stepped once per epoch (torch's CosineAnnealingLR with T_max = epochs, as the
    original code steps it: few_shot_learning_system.py:70-71, and :345-346 with the epoch's
    integer index before every iteration, at 86964701)."""
    o = config.outer
    if not o.cosine:
        return o.lr
    horizon = o.cosine_epochs or config.schedule.epochs
    progress = min(epoch, horizon) / horizon
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + math.cos(math.pi * progress))
