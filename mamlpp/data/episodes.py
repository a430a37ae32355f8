"""Episodes: an N-way k-shot task with q targets per class, a pure function of
(dataset content, split, seed, index).

Episode i draws its random numbers from numpy's PCG64 seeded by SeedSequence([seed, split, i])
and uses only uniform doubles (`Generator.random`), whose stream numpy keeps stable across
versions and platforms: the same arguments give byte-identical tasks on any machine, with any
number of workers, in any order of request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mamlpp.batch import TaskBatch
from mamlpp.data.cache import SplitImages
from mamlpp.errors import DataError

SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
ToFloat = Callable[[torch.Tensor], torch.Tensor]


def _first_n_in_random_order(u: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n smallest entries of each row of `u`, ordered by value: a uniformly random
    ordered n-subset when `u` is uniform noise."""
    if n < u.shape[-1]:
        part = np.argpartition(u, n - 1, axis=-1)[..., :n]
    else:
        part = np.broadcast_to(np.arange(u.shape[-1]), u.shape).copy()
    order = np.argsort(np.take_along_axis(u, part, axis=-1), axis=-1)
    return np.take_along_axis(part, order, axis=-1)


@dataclass(frozen=True)
class EpisodeSampler:
    """The episodes of one split. `batch(range(t * B, (t + 1) * B))` is meta-batch t."""

    images: SplitImages
    split: str
    seed: int
    n_way: int
    k_shot: int
    target_per_class: int
    rotate: bool
    to_float: ToFloat

    @property
    def num_classes(self) -> int:
        return self.images.num_classes

    def _rng(self, index: int) -> np.random.Generator:
        if index < 0:
            raise DataError(f"episode index {index} is negative; episodes are numbered from 0")
        entropy = [self.seed & 0xFFFFFFFFFFFFFFFF, SPLIT_CODE[self.split], int(index)]
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))

    def episode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image indices into the split [N, k+q], class order = labels 0..N-1;
        quarter turns per class [N], zeros unless this split rotates)."""
        rng = self._rng(index)
        per_class = self.k_shot + self.target_per_class
        classes = _first_n_in_random_order(rng.random(self.num_classes), self.n_way)
        counts = self.images.counts[classes]
        u = rng.random((self.n_way, int(counts.max())))
        u[np.arange(u.shape[1]) >= counts[:, None]] = 2.0  # beyond a class's images: never drawn
        picks = _first_n_in_random_order(u, per_class)
        turns = (rng.random(self.n_way) * 4).astype(np.int64)
        if not self.rotate:
            turns[:] = 0
        return self.images.offsets[classes][:, None] + picks, turns

    def batch(self, indices: Sequence[int], device: torch.device | str | None = None) -> TaskBatch:
        """The tasks with these episode indices as one TaskBatch (float32; CPU unless `device`)."""
        episodes = [self.episode(i) for i in indices]
        if not episodes:
            raise DataError("a batch needs at least one episode index")
        flat = np.stack([e[0] for e in episodes]).reshape(-1)
        turns = torch.from_numpy(np.stack([e[1] for e in episodes]))
        b, n, k, q = len(episodes), self.n_way, self.k_shot, self.target_per_class
        x = torch.from_numpy(np.asarray(self.images.images[flat]))
        x = x.view(b, n, k + q, *x.shape[1:])
        for t in range(1, 4):
            chosen = turns == t
            if bool(chosen.any()):
                x[chosen] = torch.rot90(x[chosen], t, dims=(-2, -1))
        x = self.to_float(x)
        labels = torch.arange(n).view(1, n, 1)
        support_y = labels.expand(b, n, k).reshape(b, n * k)
        target_y = labels.expand(b, n, q).reshape(b, n * q)
        out = TaskBatch(
            x[:, :, :k].reshape(b, n * k, *x.shape[3:]),
            support_y,
            x[:, :, k:].reshape(b, n * q, *x.shape[3:]),
            target_y,
        )
        return out.to(device) if device is not None else out
