"""A host sampler: an independent reference for the device sampler (`EpisodeSampler.batch`).

`host_batch(sampler, indices)` computes the same `TaskBatch` on the host, the plain way: each
episode planned alone by `sampler.episode(i)`, the pixels gathered with numpy from the split (or from numpy-rotated copies of it), converted to float on the CPU with the
float conversions below. tests/test_data_device.py checks the device sampler against it bit for
bit; benchmarks/bench_data.py times both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from mamlpp.data import IMAGENET_MEAN, IMAGENET_STD
from mamlpp.data.batch import TaskBatch
from mamlpp.data.episodes import EpisodeSampler


def _omniglot(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32)


def _synthetic(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).mul_(1.0 / 255.0)


def _imagenet(x: torch.Tensor) -> torch.Tensor:
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    return x.to(torch.float32).mul_(1.0 / (255.0 * std)).sub_(mean / std)


HOST_FLOAT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "omniglot": _omniglot,
    "synthetic": _synthetic,
    "miniimagenet": _imagenet,
}


class HostSampler:
    """Batches computed on the host, as before: numpy gathers from `sampler.images`."""

    def __init__(self, sampler: EpisodeSampler, dataset: str) -> None:
        self.sampler = sampler
        self.to_float = HOST_FLOAT[dataset]
        source = np.asarray(sampler.images.images)
        if sampler.rotate:
            turned = [np.rot90(source, t, axes=(-2, -1)) for t in range(4)]
            source = np.ascontiguousarray(np.concatenate(turned))
        self.source = source

    def batch(self, indices: Sequence[int]) -> TaskBatch:
        s = self.sampler
        episodes = [s.episode(i) for i in indices]
        picks = np.stack([e[0] for e in episodes])
        turns = np.stack([e[1] for e in episodes])
        b, n, k, q = len(episodes), s.n_way, s.k_shot, s.target_per_class
        labels = torch.arange(n).view(1, n, 1)
        return TaskBatch(
            self._images(picks[:, :, :k], turns),
            labels.expand(b, n, k).reshape(b, n * k),
            self._images(picks[:, :, k:], turns),
            labels.expand(b, n, q).reshape(b, n * q),
        )

    def _images(self, picks: np.ndarray, turns: np.ndarray) -> torch.Tensor:
        b, n, m = picks.shape
        s = self.sampler
        index = picks + (turns * len(s.images.images))[:, :, None] if s.rotate else picks
        x = torch.from_numpy(np.asarray(self.source[index.reshape(-1)]))
        return self.to_float(x.view(b, n * m, *x.shape[1:]))
