"""Episodes: an N-way k-shot task with q targets per class, a pure function of
(dataset content, split, seed, index).

Episode i draws its random numbers from numpy's PCG64 seeded by SeedSequence([seed, split, i])
and uses only uniform doubles (`Generator.random`), whose stream numpy keeps stable across
versions and platforms: the same arguments give byte-identical tasks on any machine, with any
number of workers, in any order of request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mamlpp.data.batch import TaskBatch
from mamlpp.data.cache import SplitImages
from mamlpp.errors import DataError

SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
ToFloat = Callable[[torch.Tensor], torch.Tensor]


def _smallest_in_order(u: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n smallest entries of each row of `u`, ordered by value: a uniformly random
    ordered n-subset of the columns when `u` is uniform noise."""
    if u.ndim == 1:
        part = np.argpartition(u, n - 1)[:n] if n < len(u) else np.arange(len(u))
        return part[np.argsort(u[part])]
    if u.shape[-1] <= 64:
        return np.argsort(u, axis=-1)[..., :n]
    part = np.argpartition(u, n - 1, axis=-1)[..., :n]
    return np.take_along_axis(part, np.argsort(np.take_along_axis(u, part, -1), -1), -1)


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
    _counts: np.ndarray = field(init=False, repr=False)
    _source: np.ndarray = field(init=False, repr=False)
    """What batches gather from: the images, or when rotating all four quarter turns of them
    ([4 * n, C, H, W], turn t of image i at t * n + i), so a batch is a single gather."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_counts", self.images.counts)
        source = self.images.images
        if self.rotate:
            turned = [np.rot90(source, t, axes=(-2, -1)) for t in range(4)]
            source = np.ascontiguousarray(np.concatenate(turned))
        object.__setattr__(self, "_source", source)

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
        classes = _smallest_in_order(rng.random(self.num_classes), self.n_way)
        counts = self._counts[classes]
        u = rng.random((self.n_way, int(counts.max())))
        u[np.arange(u.shape[1]) >= counts[:, None]] = 2.0  # beyond a class's images: never drawn
        picks = _smallest_in_order(u, self.k_shot + self.target_per_class)
        turns = (rng.random(self.n_way) * 4).astype(np.int64)
        if not self.rotate:
            turns[:] = 0
        return self.images.offsets[classes][:, None] + picks, turns

    def batch(self, indices: Sequence[int], device: torch.device | str | None = None) -> TaskBatch:
        """The tasks with these episode indices as one TaskBatch (float32; CPU unless `device`)."""
        episodes = [self.episode(i) for i in indices]
        if not episodes:
            raise DataError("a batch needs at least one episode index")
        picks = np.stack([e[0] for e in episodes])
        turns = np.stack([e[1] for e in episodes])
        b, n, k, q = len(episodes), self.n_way, self.k_shot, self.target_per_class
        labels = torch.arange(n).view(1, n, 1)
        out = TaskBatch(
            self._images(picks[:, :, :k], turns),
            labels.expand(b, n, k).reshape(b, n * k),
            self._images(picks[:, :, k:], turns),
            labels.expand(b, n, q).reshape(b, n * q),
        )
        return out.to(device) if device is not None else out

    def _images(self, picks: np.ndarray, turns: np.ndarray) -> torch.Tensor:
        """Images [B, N, m] (split indices) -> float [B, N*m, C, H, W], class j turned turns[:, j]
        quarter turns counter-clockwise; one uint8 gather in the final layout, converted once."""
        b, n, m = picks.shape
        index = picks + (turns * len(self.images.images))[:, :, None] if self.rotate else picks
        x = torch.from_numpy(np.asarray(self._source[index.reshape(-1)]))
        return self.to_float(x.view(b, n * m, *x.shape[1:]))
