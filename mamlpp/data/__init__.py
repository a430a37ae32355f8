"""Few-shot episodes for the engine: Omniglot, mini-ImageNet and synthetic data.

    train = make_episodes(config, "train", data_root)
    batch = train.batch(range(t * B, (t + 1) * B))   # meta-batch t, a TaskBatch

`make_episodes(..., device="cuda")` keeps the split's images on the GPU and returns batches there.

The data root holds one folder per dataset (`omniglot/`, `miniimagenet/`); it comes from the
`data_root` argument (--data-root), else $MAMLPP_DATA, else ./data. Preprocessed images are cached
under $MAMLPP_CACHE (default ~/.cache/mamlpp), keyed by the source files' content.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

from mamlpp.config import Config
from mamlpp.data.cache import ImageSets, SplitImages
from mamlpp.data.episodes import EpisodeSampler, ToFloat
from mamlpp.data.paths import resolve_data_root
from mamlpp.errors import DataError

__all__ = ["EpisodeSampler", "check_data", "load_splits", "make_episodes", "resolve_data_root"]

Split = Literal["train", "val", "test"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_splits(
    dataset: str, data_root: str | Path | None = None, omniglot_split: str = "paper"
) -> ImageSets:
    """All three splits of a dataset as uint8 images (from the cache, built when missing);
    `omniglot_split` picks Omniglot's class split (`data.omniglot_split`)."""
    if dataset == "synthetic":
        from mamlpp.data import synthetic

        return synthetic.build()
    if dataset == "omniglot":
        from mamlpp.data import omniglot

        return omniglot.load(data_root, choice=omniglot_split)[0]
    if dataset == "miniimagenet":
        from mamlpp.data import miniimagenet

        return miniimagenet.load(data_root)[0]
    raise DataError(f"unknown dataset {dataset!r}; choose omniglot, miniimagenet or synthetic")


def _omniglot_float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32)  # pixels stay 0/1, not normalised (as in the paper's code)


def _synthetic_float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).mul_(1.0 / 255.0)


@lru_cache(maxsize=None)  # noqa: UP033 (`cache` is this package's cache module)
def _imagenet_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 / (255 std), mean / std) [3, 1, 1], computed on the CPU (the same numbers for every
    device) and moved to `device` once."""
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    return (1.0 / (255.0 * std)).to(device), (mean / std).to(device)


def _imagenet_float(x: torch.Tensor) -> torch.Tensor:
    """/255, then per-channel ImageNet mean/std (channels are dimension -3), on x's device."""
    scale, shift = _imagenet_constants(x.device)
    return x.to(torch.float32).mul_(scale).sub_(shift)


TO_FLOAT: dict[str, ToFloat] = {
    "omniglot": _omniglot_float,
    "miniimagenet": _imagenet_float,
    "synthetic": _synthetic_float,
}


def default_seed(config: Config, split: Split) -> int:
    d = config.data
    if split == "train":
        return config.seed if d.train_seed is None else d.train_seed
    return d.val_seed if split == "val" else d.test_seed


def check_task_shape(config: Config, split: str, images: SplitImages) -> None:
    """N, k, q must be positive and fit the split; DataError naming the fix otherwise."""
    d = config.data
    for key, value in (("n_way", d.n_way), ("k_shot", d.k_shot), ("target_per_class", d.target_per_class)):
        if value < 1:
            raise DataError(f"data.{key}={value} must be at least 1")
    if d.n_way > images.num_classes:
        raise DataError(
            f"data.n_way={d.n_way} but the {d.dataset} {split} split has only "
            f"{images.num_classes} classes; lower data.n_way"
        )
    per_class = d.k_shot + d.target_per_class
    smallest = int(images.counts.argmin())
    if images.counts[smallest] < per_class:
        raise DataError(
            f"class {images.class_names[smallest]} of the {d.dataset} {split} split has "
            f"{images.counts[smallest]} images, fewer than data.k_shot + data.target_per_class = "
            f"{per_class}; lower data.k_shot or data.target_per_class"
        )


def check_data(config: Config, data_root: str | Path | None = None) -> None:
    """Whether the config's dataset is there (its cache built when missing, checksums verified)
    and every split fits the task shape; DataError naming the fix otherwise. `mamlpp train` asks
    this before it creates the run directory."""
    sets = config_splits(config, data_root)
    for split in ("train", "val", "test"):
        check_task_shape(config, split, sets[split])


def config_splits(config: Config, data_root: str | Path | None = None) -> ImageSets:
    """`load_splits` of the config's dataset and, for Omniglot, its class split."""
    return load_splits(config.data.dataset, data_root, config.data.omniglot_split)


def make_episodes(
    config: Config,
    split: Split,
    data_root: str | Path | None = None,
    seed: int | None = None,
    device: torch.device | str = "cpu",
) -> EpisodeSampler:
    """The episode sampler of one split, holding its images on `device` and giving batches
    there. Seeds default to config.data.train_seed (else config.seed), config.data.val_seed and
    config.data.test_seed. Only Omniglot's training split rotates classes, and only when
    config.data.rotate_train_classes."""
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split {split!r}; choose train, val or test")
    d = config.data
    images = config_splits(config, data_root)[split]
    check_task_shape(config, split, images)
    return EpisodeSampler(
        images=images,
        split=split,
        seed=default_seed(config, split) if seed is None else seed,
        n_way=d.n_way,
        k_shot=d.k_shot,
        target_per_class=d.target_per_class,
        rotate=d.dataset == "omniglot" and split == "train" and d.rotate_train_classes,
        to_float=TO_FLOAT[d.dataset],
        device=device,
    )
