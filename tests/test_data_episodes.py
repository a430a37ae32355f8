"""Episodes: determinism, labels, rotation, normalisation, seeds."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mamlpp.config import Config, DataConfig
from mamlpp.data import make_episodes
from mamlpp.data.episodes import EpisodeSampler


def _config(**data: object) -> Config:
    base = {"dataset": "synthetic", "n_way": 5, "k_shot": 2, "target_per_class": 3}
    return Config(data=DataConfig(**{**base, **data}))  # type: ignore[arg-type]


def _same(a: tuple, b: tuple) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_batch_shapes_and_labels() -> None:
    b = make_episodes(_config(), "train").batch(range(4))
    assert b.support_x.shape == (4, 10, 1, 28, 28) and b.target_x.shape == (4, 15, 1, 28, 28)
    assert b.support_x.dtype == torch.float32 and b.support_y.dtype == torch.long
    assert torch.equal(b.support_y[0], torch.arange(5).repeat_interleave(2))
    assert torch.equal(b.target_y[3], torch.arange(5).repeat_interleave(3))


def test_same_arguments_give_byte_identical_batches_in_any_order() -> None:
    a = make_episodes(_config(), "train", seed=7)
    b = make_episodes(_config(), "train", seed=7)
    whole = a.batch(range(6))
    assert _same(whole, b.batch(range(6)))
    assert _same(whole.task(4), b.batch([4]))  # one episode alone == its slot in a batch
    reordered = b.batch([5, 4, 3, 2, 1, 0])
    assert torch.equal(reordered.support_x.flip(0), whole.support_x)


def test_different_seeds_and_indices_give_different_episodes() -> None:
    a = make_episodes(_config(), "train", seed=1).batch([0])
    b = make_episodes(_config(), "train", seed=2).batch([0])
    c = make_episodes(_config(), "train", seed=1).batch([1])
    assert not torch.equal(a.support_x, b.support_x) and not torch.equal(a.support_x, c.support_x)


def test_default_seeds_come_from_the_config() -> None:
    cfg = replace(_config(), seed=3)
    assert make_episodes(cfg, "train").seed == 3
    assert make_episodes(replace(cfg, data=replace(cfg.data, train_seed=9)), "train").seed == 9
    assert make_episodes(cfg, "val").seed == cfg.data.val_seed != cfg.data.test_seed
    assert make_episodes(cfg, "test").seed == cfg.data.test_seed


def test_support_and_target_of_a_label_come_from_one_class_without_repeats() -> None:
    sampler = make_episodes(_config(n_way=20, k_shot=5, target_per_class=10), "train")
    offsets = sampler.images.offsets
    for i in range(20):
        picks, _ = sampler.episode(i)
        classes = np.searchsorted(offsets, picks, side="right") - 1
        assert (classes == classes[:, :1]).all()  # each row (label) is one class
        assert len(set(classes[:, 0].tolist())) == 20  # N distinct classes
        assert all(len(set(row.tolist())) == 15 for row in picks)  # no image twice


def test_synthetic_tasks_are_solvable_from_pixels() -> None:
    """A nearest-class-mean classifier on raw pixels: well above chance (0.2), not perfect."""
    b = make_episodes(_config(k_shot=1, target_per_class=5), "val").batch(range(100))
    means = b.support_x.view(100, 5, 1, -1).mean(2)
    pred = torch.cdist(b.target_x.view(100, 25, -1), means).argmin(-1)
    assert 0.6 < (pred == b.target_y).float().mean().item() < 0.99


def _expected_images(sampler: EpisodeSampler, index: int) -> torch.Tensor:
    """The episode's images rotated one class at a time with numpy (independent of batch())."""
    picks, turns = sampler.episode(index)
    raw = np.asarray(sampler.images.images)
    rows = [np.rot90(raw[p], k=int(t), axes=(-2, -1)) for p, t in zip(picks, turns, strict=True)]
    return torch.from_numpy(np.ascontiguousarray(np.stack(rows))).float()


@pytest.fixture(scope="module")
def omniglot_config(shared_data_root: Path) -> Config:
    return Config(data=DataConfig(dataset="omniglot", n_way=20, k_shot=1, target_per_class=1))


def test_rotation_only_on_omniglot_training_tasks(omniglot_config: Config, shared_data_root: Path) -> None:
    train = make_episodes(omniglot_config, "train", shared_data_root)
    assert train.rotate and set(np.concatenate([train.episode(i)[1] for i in range(5)])) == {0, 1, 2, 3}
    b = train.batch([2])
    x = torch.cat([b.support_x.view(20, 1, 1, 28, 28), b.target_x.view(20, 1, 1, 28, 28)], 1)
    assert torch.equal(x, _expected_images(train, 2))
    for split in ("val", "test"):
        s = make_episodes(omniglot_config, split, shared_data_root)
        assert not s.rotate and not any(s.episode(i)[1].any() for i in range(5))
    off = replace(omniglot_config, data=replace(omniglot_config.data, rotate_train_classes=False))
    assert not make_episodes(off, "train", shared_data_root).rotate


def test_omniglot_batch_pixels_are_binary(omniglot_config: Config, shared_data_root: Path) -> None:
    b = make_episodes(omniglot_config, "val", shared_data_root).batch(range(8))
    assert b.support_x.shape == (8, 20, 1, 28, 28)
    assert set(torch.unique(b.target_x).tolist()) == {0.0, 1.0}


def test_batch_on_a_device_and_bad_indices() -> None:
    from mamlpp.errors import DataError

    sampler = make_episodes(_config(), "test")
    b = sampler.batch([0, 1], device="cpu")
    assert b.support_x.device.type == "cpu" and _same(b, sampler.batch([0, 1]))
    with pytest.raises(DataError, match="negative"):
        sampler.batch([-1])
    with pytest.raises(DataError, match="at least one"):
        sampler.batch([])


def test_classes_of_unequal_sizes_only_yield_their_own_images() -> None:
    from mamlpp.data import TO_FLOAT
    from mamlpp.data.cache import SplitImages

    sizes = [3, 7, 4, 30]
    split = SplitImages.from_classes(
        [(f"c{i}", np.full((n, 1, 2, 2), i, np.uint8)) for i, n in enumerate(sizes)]
    )
    sampler = EpisodeSampler(split, "train", 0, 4, 1, 2, False, TO_FLOAT["synthetic"])
    seen = set()
    for i in range(50):
        picks, _ = sampler.episode(i)
        classes = np.searchsorted(split.offsets, picks, side="right") - 1
        assert (classes == classes[:, :1]).all()
        seen.update(picks.ravel().tolist())
        b = sampler.batch([i])
        pixel_class = (b.support_x[0, :, 0, 0, 0] * 255).round().long()
        assert torch.equal(pixel_class, torch.from_numpy(classes[:, 0]))  # label j shows class j
    assert len(seen) > 0.9 * sum(sizes)  # all images of every class get drawn


def _pinned_sampler(split: str, seed: int, shape: tuple[int, int, int, int, int], rotate: bool) -> EpisodeSampler:
    from mamlpp.data import TO_FLOAT
    from mamlpp.data.cache import SplitImages

    c, m, n, k, q = shape
    images = SplitImages(
        np.zeros((c * m, 1, 1, 1), np.uint8), np.arange(c + 1, dtype=np.int64) * m, tuple(map(str, range(c)))
    )
    return EpisodeSampler(images, split, seed, n, k, q, rotate, TO_FLOAT["synthetic"])


def test_episodes_are_pinned_across_processes_machines_and_versions() -> None:
    """Episode i is a pure function of (content, split, seed, i) "on any machine": these values
    were recorded in another process; a change here silently changes every run's tasks (and
    breaks resuming a run started before it)."""
    s = _pinned_sampler("train", 123, (10, 6, 3, 1, 2), rotate=True)
    for index, picks, turns in [
        (0, [[9, 7, 6], [29, 28, 25], [21, 20, 22]], [3, 2, 3]),
        (2**40, [[33, 30, 35], [20, 22, 23], [55, 54, 57]], [3, 3, 3]),
    ]:
        got = s.episode(index)
        assert got[0].tolist() == picks and got[1].tolist() == turns
    val = _pinned_sampler("val", 0, (10, 6, 3, 1, 2), rotate=False).episode(0)
    assert val[0].tolist() == [[42, 43, 47], [26, 28, 25], [31, 34, 35]] and val[1].tolist() == [0, 0, 0]
    for shape, digest in [
        ((1150, 20, 20, 1, 1), "213d8d0a21e0a448"),  # Omniglot train, 20-way 1-shot
        ((1150, 20, 5, 5, 15), "f780a29c13eae263"),
        ((64, 600, 5, 5, 15), "75128da940de810a"),  # mini-ImageNet train, 5-way 5-shot
    ]:
        picks, turns = _pinned_sampler("train", 123, shape, rotate=True).plan(range(100))
        data = picks.astype("<i8").tobytes() + turns.astype("<i8").tobytes()
        assert hashlib.sha256(data).hexdigest()[:16] == digest, shape


def test_validation_tasks_do_not_depend_on_the_chunking() -> None:
    """600 validation tasks as one batch == chunks of 8 (and of 7) concatenated."""
    s = make_episodes(_config(n_way=5, k_shot=1, target_per_class=5), "val")
    whole = s.batch(range(600))
    for size in (8, 7):
        parts = [s.batch(range(a, min(a + size, 600))) for a in range(0, 600, size)]
        assert _same(whole, tuple(torch.cat(p) for p in zip(*parts, strict=True)))


def test_training_meta_batches_follow_the_global_iteration_and_resume() -> None:
    """Meta-batch t = tasks [t*B, (t+1)*B), t = epoch * iterations + i: every epoch draws new
    tasks, and an epoch run alone (after a resume) draws the same ones as in sequence."""
    from mamlpp.config import OuterConfig, ScheduleConfig
    from mamlpp.engine.learner import StepResult
    from mamlpp.runs.stops import StopRequest
    from mamlpp.runs.trainer import iterate_epoch

    cfg = replace(
        _config(), outer=OuterConfig(meta_batch_size=2), schedule=ScheduleConfig(iterations_per_epoch=3)
    )
    seen: list[list[int]] = []

    def step(indices: range) -> list[StepResult]:
        seen.append(list(indices))
        return [StepResult(0.0, 0.0, [], False, {}, [])]

    for epoch in (0, 1):
        iterate_epoch(step, [None], cfg, epoch, False, StopRequest())
    assert seen == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]
    seen.clear()
    iterate_epoch(step, [None], cfg, 1, False, StopRequest())  # resumed at epoch 1
    assert seen == [[6, 7], [8, 9], [10, 11]]
