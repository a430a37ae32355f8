"""The ensemble test's two paths, float64 on the CPU: the members one after the other (the CPU's
path) and the members as one folded `SeedStack` pass per chunk (CUDA's path, forced here). The
votes' inputs agree to rounding and the per-task accuracies exactly, for both votes, with a
damaged checkpoint left out and members from different epochs (Adam at different steps)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from mamlpp.data import make_episodes
from mamlpp.engine.learner import MetaLearner
from mamlpp.engine.seeds import SeedStack
from mamlpp.runs import ensemble
from mamlpp.runs.tracking import atomic_torch_save
from mamlpp.runs.trainer import evaluation_chunks
from tests.test_seeds import random_batch, tiny


def _checkpoints(c: Any, root: Path, epochs: int) -> list[Path]:
    learner = MetaLearner(c, dtype=torch.float64)
    paths = []
    for epoch in range(epochs):
        learner.train_step(random_batch(c, 2, epoch), epoch)
        paths.append(root / f"epoch_{epoch:03d}.pt")
        atomic_torch_save(learner.state_dict(), paths[-1])
    return paths


def _damage(path: Path) -> None:
    """A changed weight under the old checksum: torch reads it, the checksum does not match."""
    state = torch.load(path, weights_only=False)
    state["meta_parameters"]["conv0.weight"].mul_(2)
    torch.save(state, path)


@pytest.mark.parametrize("vote", ["probabilities", "logits"])
def test_folded_ensemble_equals_the_members_one_after_the_other(
    vote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tiny()
    c = replace(base, schedule=replace(base.schedule, ensemble=vote, test_tasks=7, eval_batch_size=3))
    paths = _checkpoints(c, tmp_path, 4)
    _damage(paths[1])
    learners, skipped = ensemble.load_learners(c, paths, "cpu", torch.float64)
    assert list(skipped) == [paths[1]] and "fails its checksum" in skipped[paths[1]]
    assert len(learners) == 3
    sampler = make_episodes(c, "test")
    chunks = evaluation_chunks(c, 7)  # 3, 3 and 1 tasks

    votes: list[list[torch.Tensor]] = []
    original = ensemble.vote_of

    def recording(scores: Any) -> torch.Tensor:
        votes.append(list(scores))
        return original(scores)

    monkeypatch.setattr(ensemble, "vote_of", recording)
    apart = ensemble.ensemble_accuracies(learners, sampler, chunks, fold=False)
    folded = ensemble.ensemble_accuracies(learners, sampler, chunks, fold=True)
    assert torch.equal(ensemble.ensemble_accuracies(learners, sampler, chunks), apart)  # CPU: apart
    assert apart.shape == (7,) and torch.equal(folded, apart)
    assert len(votes) == 3 * len(chunks)
    for a, f in zip(votes[: len(chunks)], votes[len(chunks) : 2 * len(chunks)], strict=True):
        assert len(a) == len(f) == 3  # the damaged checkpoint is not among the members
        assert not torch.equal(a[0], a[2])  # members of different epochs score differently
        for x, y in zip(a, f, strict=True):
            torch.testing.assert_close(y, x, rtol=0, atol=1e-12)
        sums = torch.stack(a).sum(-1)
        is_probs = torch.allclose(sums, torch.ones_like(sums))
        assert is_probs == (vote == "probabilities")


def test_a_stack_of_learners_holds_their_evaluation_state() -> None:
    """`SeedStack.of_learners` over members at different Adam steps: each seed evaluates as its
    learner does (all fields, 1e-12); the stack refuses their optimizers as one training state."""
    c = tiny()
    learners = [MetaLearner(c, dtype=torch.float64) for _ in range(3)]
    for steps, learner in enumerate(learners):
        for t in range(steps):
            learner.train_step(random_batch(c, 2, 10 * steps + t), t)
    stack = SeedStack.of_learners(learners)
    assert stack.seeds == 3 and stack.dtype == torch.float64
    batch = random_batch(c, 3, 5)
    for learner, result in zip(learners, stack.evaluate_shared(batch), strict=True):
        expected = learner.evaluate(batch)
        for name in ("loss", "accuracy", "probs", "logits"):
            torch.testing.assert_close(getattr(result, name), getattr(expected, name), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="different steps"):
        stack.load_state_dicts([learner.state_dict() for learner in learners])
