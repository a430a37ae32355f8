"""A real learning signal: outer steps on a synthetic task family drive the meta loss down."""

from __future__ import annotations

import torch

from mamlpp.data import make_episodes
from mamlpp.engine.learner import MetaLearner
from mamlpp.presets import synthetic_config


def test_meta_training_on_synthetic_tasks_lowers_the_meta_loss_and_beats_chance() -> None:
    c = synthetic_config()
    learner = MetaLearner(c)
    train = make_episodes(c, "train")
    b = c.outer.meta_batch_size
    losses = [learner.train_step(train.batch(range(t * b, (t + 1) * b)), epoch=0).loss for t in range(200)]
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.6 * first, (first, last)
    val = make_episodes(c, "val")
    accuracy = torch.cat([learner.evaluate(val.batch(range(i, i + 10))).accuracy for i in range(0, 50, 10)])
    assert accuracy.mean() > 2.0 / c.data.n_way  # well above chance (1/N) on held-out classes
