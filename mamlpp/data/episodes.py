"""Episodes: an N-way k-shot task with q targets per class, a pure function of
(dataset content, split, seed, index).

Episode i draws its random numbers from numpy's PCG64 seeded by SeedSequence([seed, split, i])
and uses only uniform doubles (`Generator.random`), whose stream numpy keeps stable across
versions and platforms: the same arguments give byte-identical tasks on any machine, with any
number of workers, in any order of request.

Only the choice of images (small integer arrays) is computed on the host; the pixels stay on the
sampler's device: the split's uint8 images are moved there once, and a meta-batch is one gather
from them by one small index tensor, then one conversion to float, so a CUDA run copies no images
from the host per iteration. The gather and the float conversion are exact, so every device gives
the same tasks.
"""

from __future__ import annotations

import warnings
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


def _smallest_per_row(u: np.ndarray, n: int) -> np.ndarray:
    """`_smallest_in_order(u, n)` for uniform [0, 1) noise `u` [B, C] with n small against C,
    ranking only the entries below a threshold that about 2n + 8 entries of a row pass: when a
    row has at least n of them, its n smallest are among them. Batches with a row short of n
    (probability below 1e-4 per row) are ranked in full."""
    b, c = u.shape
    cut = (2 * n + 8) / c
    if cut > 0.25:
        return _smallest_in_order(u, n)
    below = u < cut
    counts = below.sum(1)
    if (counts < n).any():
        return _smallest_in_order(u, n)
    rows, cols = np.nonzero(below)  # row by row
    order = np.lexsort((u[rows, cols], rows))
    starts = np.cumsum(counts) - counts
    return cols[order[starts[:, None] + np.arange(n)]]


@dataclass(frozen=True)
class EpisodeSampler:
    """The episodes of one split. `batch(range(t * B, (t + 1) * B))` is meta-batch t, a TaskBatch
    on `device`."""

    images: SplitImages
    split: str
    seed: int
    n_way: int
    k_shot: int
    target_per_class: int
    rotate: bool
    to_float: ToFloat
    device: torch.device | str = "cpu"
    _device: torch.device = field(init=False, repr=False)
    _counts: np.ndarray = field(init=False, repr=False)
    _source: torch.Tensor = field(init=False, repr=False)
    """What batches gather from, on `device`: the images, or when rotating all four quarter turns
    of them ([4 * n, C, H, W], turn t of image i at t * n + i), so a batch is a single gather.
    Precomputed turns cost 4x the split's memory (Omniglot's training split: 60 MB) and save one
    rotation kernel per quarter turn per batch."""
    _labels: tuple[torch.Tensor, torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        device = torch.device(self.device)
        object.__setattr__(self, "_device", device)
        object.__setattr__(self, "_counts", self.images.counts)
        source = _as_tensor(self.images.images).to(device)  # on the CPU: no copy
        if self.rotate:
            source = torch.cat([torch.rot90(source, t, dims=(-2, -1)) for t in range(4)])
        object.__setattr__(self, "_source", source)
        n, k, q = self.n_way, self.k_shot, self.target_per_class
        labels = torch.arange(n, device=device)
        object.__setattr__(
            self, "_labels", (labels.repeat_interleave(k)[None], labels.repeat_interleave(q)[None])
        )

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
        quarter turns per class [N], zeros unless this split rotates). The definition of an
        episode; `plan` computes the same for many episodes at once."""
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

    def plan(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """`episode(i)` for each index, stacked: (picks [B, N, k+q], turns [B, N]).

        When every class has the same number of images m (Omniglot, mini-ImageNet, synthetic),
        an episode's random numbers are C + N*m + N uniform doubles whatever classes it draws;
        they are drawn in one call per episode (doubles come one per 64-bit output, so one call
        of n + n' draws equals a call of n followed by one of n') and ranked for all episodes at
        once. The ranks equal episode()'s since the draws are distinct (a tie among 53-bit
        doubles has probability ~C^2 / 2^54 per episode)."""
        if not len(indices):
            raise DataError("a batch needs at least one episode index")
        counts = self._counts
        if counts.min() != counts.max():
            episodes = [self.episode(i) for i in indices]
            return np.stack([e[0] for e in episodes]), np.stack([e[1] for e in episodes])
        b, c, n, m = len(indices), self.num_classes, self.n_way, int(counts[0])
        draws = np.empty((b, c + n * m + n))
        for row, index in zip(draws, indices, strict=True):
            self._rng(index).random(out=row)
        classes = _smallest_per_row(draws[:, :c], n)
        u = draws[:, c : c + n * m].reshape(b, n, m)
        picks = _smallest_in_order(u, self.k_shot + self.target_per_class)
        turns = (draws[:, c + n * m :] * 4).astype(np.int64)
        if not self.rotate:
            turns[:] = 0
        return self.images.offsets[classes][:, :, None] + picks, turns

    def batch(self, indices: Sequence[int], device: torch.device | str | None = None) -> TaskBatch:
        """The tasks with these episode indices as one TaskBatch (float32, on the sampler's
        device; moved to `device` when given)."""
        picks, turns = self.plan(indices)
        b, n, k, q = len(indices), self.n_way, self.k_shot, self.target_per_class
        if self.rotate:
            picks = picks + (turns * len(self.images.images))[:, :, None]
        # support images of all tasks, then target images: each part a contiguous view
        flat = np.concatenate([picks[:, :, :k].reshape(-1), picks[:, :, k:].reshape(-1)])
        x = self.to_float(self._source.index_select(0, self._index_tensor(flat)))
        shape = x.shape[1:]
        support_y, target_y = self._labels
        out = TaskBatch(
            x[: b * n * k].view(b, n * k, *shape),
            support_y.repeat(b, 1),
            x[b * n * k :].view(b, n * q, *shape),
            target_y.repeat(b, 1),
        )
        return out.to(device) if device is not None else out

    def _index_tensor(self, flat: np.ndarray) -> torch.Tensor:
        """The image indices on the sampler's device: one small copy, from pinned memory on
        CUDA so that it does not wait for the work queued before it."""
        index = torch.from_numpy(flat)
        if self._device.type == "cuda":
            return index.pin_memory().to(self._device, non_blocking=True)
        return index.to(self._device)


def _as_tensor(images: np.ndarray) -> torch.Tensor:
    """The images as a tensor sharing their memory. The cache is memory-mapped read-only; nothing
    writes to the result (gathers copy), so torch's warning about read-only arrays is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(images))
