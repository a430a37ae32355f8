"""The test protocol: the top-k checkpoints by validation accuracy each adapt
to every test task (first-order steps, as at validation); their class probabilities are averaged
(`schedule.ensemble='probabilities'`), or their raw logits (`'logits'`, as the authors' code does:
experiment_builder.py:282 at 86964701, docs/fidelity.md row 4), and the ensemble's per-task
accuracy is reported as mean, std and 95% confidence interval over the test tasks.

On CUDA the members score each chunk of test tasks together, as one folded pass of a
`SeedStack` holding them (`seeds.folds_evaluation`); elsewhere one after the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from mamlpp.config import Config
from mamlpp.engine.learner import EvalResult, MetaLearner
from mamlpp.engine.seeds import SeedStack, folds_evaluation
from mamlpp.errors import MamlppError
from mamlpp.runs.checkpoints import load_checkpoint, load_learner_state
from mamlpp.runs.tracking import CorruptFileError

ENSEMBLE = {"probabilities": "mean of class probabilities", "logits": "mean of raw logits"}
"""test.json's description of each `schedule.ensemble` choice."""


def load_learners(
    config: Config, paths: Sequence[Path], device: str, dtype: torch.dtype = torch.float32
) -> tuple[list[MetaLearner], dict[Path, str]]:
    """One MetaLearner per checkpoint file that passes its checksum; returns them and, for each
    file that does not (missing, unreadable, damaged), the reason it was left out. No valid
    checkpoint at all is a MamlppError."""
    if not paths:
        raise MamlppError("no checkpoints to test; train at least one epoch first")
    learners, skipped = [], {}
    for path in paths:
        try:
            state = load_checkpoint(path)
        except CorruptFileError as e:
            skipped[path] = str(e)
            continue
        learner = MetaLearner(config, device=device, dtype=dtype)
        load_learner_state(learner, state, path)
        learners.append(learner)
    if not learners:
        raise MamlppError(
            f"none of the {len(paths)} top-k checkpoints can be used ({'; '.join(skipped.values())})"
            "; the run's training has to be redone: delete its run directory and run the same "
            "command again"
        )
    return learners, skipped


def ensemble_accuracies(
    learners: Sequence[MetaLearner], sampler: Any, chunks: Sequence[range],
    between: Callable[[], None] = lambda: None, fold: bool | None = None,
) -> torch.Tensor:  # fmt: skip
    """[tasks] accuracy of the ensemble's vote, task by task: the argmax of the members' mean
    class probabilities or mean logits (`schedule.ensemble` of the first member's config);
    `between` is called before each chunk (a stop request raises there). `fold`: the members
    score each chunk as one folded pass (a `SeedStack` of them, `SeedStack.evaluate_shared`)
    instead of one after the other; None chooses by their device (`seeds.folds_evaluation`).
    tests/test_ensemble.py compares the two."""
    first = learners[0]
    field = "logits" if first.config.schedule.ensemble == "logits" else "probs"
    evaluate: Callable[[Any], Sequence[EvalResult]]
    if folds_evaluation(first.config, first.device) if fold is None else fold:
        evaluate = SeedStack.of_learners(learners).evaluate_shared
    else:
        evaluate = lambda batch: [learner.evaluate(batch) for learner in learners]  # noqa: E731
    out = []
    for chunk in chunks:
        between()
        batch = sampler.batch(chunk)
        scores = [getattr(result, field).double() for result in evaluate(batch)]
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
