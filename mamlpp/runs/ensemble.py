"""The test protocol: the top-k checkpoints by validation accuracy each adapt
to every test task (first-order steps, as at validation); their class probabilities are averaged
(`schedule.ensemble='probabilities'`), or their raw logits (`'logits'`, as the authors' code does:
experiment_builder.py:282 at 86964701, docs/fidelity.md row 4), and the ensemble's per-task
accuracy is reported as mean, std and 95% confidence interval over the test tasks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mamlpp.config import Config
from mamlpp.engine.learner import MetaLearner
from mamlpp.errors import MamlppError
from mamlpp.runs.checkpoints import load_checkpoint, load_learner_state

ENSEMBLE = {"probabilities": "mean of class probabilities", "logits": "mean of raw logits"}
"""test.json's description of each `schedule.ensemble` choice."""


def load_learners(config: Config, paths: Sequence[Path], device: str) -> list[MetaLearner]:
    """One MetaLearner per checkpoint file."""
    if not paths:
        raise MamlppError("no checkpoints to test; train at least one epoch first")
    learners = []
    for path in paths:
        learner = MetaLearner(config, device=device)
        load_learner_state(learner, load_checkpoint(path), path)
        learners.append(learner)
    return learners


def ensemble_accuracies(
    learners: Sequence[MetaLearner], sampler: Any, chunks: Sequence[range]
) -> torch.Tensor:
    """[tasks] accuracy of the ensemble's vote, task by task: the argmax of the members' mean
    class probabilities or mean logits (`schedule.ensemble` of the first member's config)."""
    field = "logits" if learners[0].config.schedule.ensemble == "logits" else "probs"
    out = []
    for chunk in chunks:
        batch = sampler.batch(chunk)
        scores = [getattr(learner.evaluate(batch), field).double() for learner in learners]
        vote = vote_of(scores)
        correct = vote.argmax(-1) == batch.target_y.to(vote.device)
        out.append(correct.double().mean(-1))
    return torch.cat(out)


def vote_of(scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """The members' scores (probabilities or logits, each [B, n, N]) averaged."""
    return torch.stack(list(scores)).mean(0)


def summarise(accuracies: torch.Tensor) -> dict[str, float]:
    """Mean, sample std and 95% CI half-width (1.96 std / sqrt(n)) of per-task accuracies."""
    n = accuracies.numel()
    std = float(accuracies.std(unbiased=True)) if n > 1 else 0.0
    return {
        "accuracy": float(accuracies.mean()),
        "ci95": 1.96 * std / math.sqrt(n),
        "std": std,
        "num_tasks": n,
    }
