"""The sampler keeps the pixels on its device: the same tasks, bit for bit, as the host sampler it
replaced (tests/support/host_sampler.py), for every dataset and split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mamlpp.config import Config, DataConfig
from mamlpp.data import TO_FLOAT, make_episodes
from mamlpp.data.batch import TaskBatch
from mamlpp.data.cache import SplitImages
from mamlpp.data.episodes import EpisodeSampler
from tests.support.host_sampler import HostSampler

INDICES = [range(8), [0], [5, 3, 1000, 2], [123456]]


def _config(dataset: str, **data: object) -> Config:
    return Config(data=DataConfig(dataset=dataset, **data))  # type: ignore[arg-type]


def _assert_same(a: TaskBatch, b: TaskBatch) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape and x.device == y.device
        assert torch.equal(x, y)


def _check_against_host(config: Config, data_root: Path | None) -> None:
    for split in ("train", "val", "test"):
        sampler = make_episodes(config, split, data_root)  # type: ignore[arg-type]
        host = HostSampler(sampler, config.data.dataset)
        for indices in INDICES:
            _assert_same(sampler.batch(indices), host.batch(indices))


def test_synthetic_batches_equal_the_host_samplers() -> None:
    _check_against_host(_config("synthetic", n_way=5, k_shot=2, target_per_class=3), None)


@pytest.mark.parametrize("n_way", [5, 20])
def test_omniglot_batches_equal_the_host_samplers(shared_data_root: Path, n_way: int) -> None:
    config = _config("omniglot", n_way=n_way, k_shot=1, target_per_class=1)
    train = make_episodes(config, "train", shared_data_root)
    assert train.rotate and train.plan(range(8))[1].any()  # the check covers rotated classes
    _check_against_host(config, shared_data_root)


def _miniimagenet_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The generated mini-ImageNet fixture under tmp_path, cached in a cache of its own (other
    tests look for the fixture's cache by its source path in the session's cache)."""
    from tests.test_data_miniimagenet import fixture_images, write_format

    monkeypatch.setenv("MAMLPP_CACHE", str(tmp_path / "cache"))
    write_format(tmp_path / "miniimagenet", "pickle", fixture_images())


def test_miniimagenet_batches_equal_the_host_samplers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _miniimagenet_fixture(tmp_path, monkeypatch)
    _check_against_host(_config("miniimagenet", n_way=3, k_shot=1, target_per_class=3), tmp_path)


def test_plan_of_many_episodes_equals_each_episode_alone() -> None:
    sampler = make_episodes(_config("synthetic", n_way=20, k_shot=5, target_per_class=10), "train")
    indices = [7, 0, 99, 3]
    picks, turns = sampler.plan(indices)
    for row, i in enumerate(indices):
        alone_picks, alone_turns = sampler.episode(i)
        assert np.array_equal(picks[row], alone_picks) and np.array_equal(turns[row], alone_turns)


def test_a_batch_equals_its_episodes_one_by_one() -> None:
    sampler = make_episodes(_config("synthetic", n_way=5, k_shot=2, target_per_class=3), "val")
    whole = sampler.batch(range(10, 16))
    alone = [sampler.batch([i]) for i in range(10, 16)]
    _assert_same(whole, TaskBatch(*(torch.cat(parts) for parts in zip(*alone, strict=True))))


def test_classes_of_unequal_sizes_plan_episode_by_episode() -> None:
    sizes = [3, 7, 4, 30, 5]
    rng = np.random.default_rng(0)
    split = SplitImages.from_classes(
        [(f"c{i}", rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8)) for i, n in enumerate(sizes)]
    )
    sampler = EpisodeSampler(split, "train", 0, 3, 1, 2, False, TO_FLOAT["synthetic"])
    host = HostSampler(sampler, "synthetic")
    for indices in INDICES:
        _assert_same(sampler.batch(indices), host.batch(indices))


def test_images_and_batches_live_on_the_requested_device() -> None:
    """The meta device (shapes without data) stands in for a GPU: every tensor of a batch is
    made there, so none comes from the host."""
    config = _config("synthetic", n_way=5, k_shot=1, target_per_class=2)
    cpu = make_episodes(config, "train")
    assert cpu._source.device.type == "cpu"
    assert np.shares_memory(cpu._source.numpy(), cpu.images.images)  # no copy on the CPU
    meta = make_episodes(config, "train", device="meta")
    assert meta._source.device.type == "meta"
    batch = meta.batch(range(4))
    assert all(t.device.type == "meta" for t in batch)
    assert [t.shape for t in batch] == [t.shape for t in cpu.batch(range(4))]


def test_rotated_and_normalised_sources_live_on_the_requested_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _miniimagenet_fixture(tmp_path, monkeypatch)
    config = _config("miniimagenet", n_way=3, k_shot=1, target_per_class=3)
    batch = make_episodes(config, "val", tmp_path, device="meta").batch([0, 1])
    assert all(t.device.type == "meta" for t in batch) and batch.support_x.dtype == torch.float32
    rotating = EpisodeSampler(
        make_episodes(config, "train", tmp_path).images, "train", 0, 3, 1, 3, True,
        TO_FLOAT["omniglot"], device="meta",
    )  # fmt: skip
    assert rotating._source.device.type == "meta" and len(rotating._source) == 4 * 6 * 4


def test_ranking_below_a_threshold_equals_a_full_ranking() -> None:
    from mamlpp.data.episodes import _smallest_in_order, _smallest_per_row

    u = np.random.default_rng(0).random((50, 964))
    for n in (1, 5, 20):
        assert np.array_equal(_smallest_per_row(u, n), _smallest_in_order(u, n))
    u[7, u[7] < 0.5] += 0.5  # a row with no small entries: the whole batch is ranked in full
    assert np.array_equal(_smallest_per_row(u, 5), _smallest_in_order(u, 5))
    assert np.array_equal(_smallest_per_row(u[:, :40], 5), _smallest_in_order(u[:, :40], 5))
