"""Synthetic few-shot data: generated instantly, tiny, and learnable by the paper's conv net.

Each class is a random blocky prototype (a 7x7 binary pattern upscaled to 28x28); each image is
its prototype shifted by up to 2 pixels each way plus Gaussian noise. The whole dataset is a
fixed function of `GENERATOR_SEED`, independent of the run seed, like a real dataset.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mamlpp.data.cache import ImageSets, SplitImages

SPLIT_SIZES = {"train": 240, "val": 40, "test": 40}
IMAGES_PER_CLASS = 32
IMAGE_SIZE, GRID, MAX_SHIFT, NOISE = 28, 7, 2, 0.15
GENERATOR_SEED = 20190101


def _class_images(rng: np.random.Generator, n_classes: int) -> np.ndarray:
    """uint8 [n_classes, IMAGES_PER_CLASS, 1, 28, 28]; pixel value / 255 is the intensity."""
    cell = IMAGE_SIZE // GRID
    patterns = rng.random((n_classes, GRID, GRID)) < 0.5
    protos = np.kron(patterns, np.ones((cell, cell))).astype(np.float32)
    out = np.empty((n_classes, IMAGES_PER_CLASS, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(n_classes, IMAGES_PER_CLASS, 2))
    noise = rng.normal(0.0, NOISE, size=out.shape).astype(np.float32)
    for c in range(n_classes):
        for i in range(IMAGES_PER_CLASS):
            shifted = np.roll(protos[c], tuple(shifts[c, i]), axis=(0, 1))
            out[c, i, 0] = np.clip((shifted + noise[c, i, 0]) * 255.0, 0, 255).round()
    return out


@lru_cache(maxsize=1)
def build() -> ImageSets:
    """Train/val/test splits of disjoint generated classes (240/40/40, 32 images each)."""
    rng = np.random.default_rng(GENERATOR_SEED)
    sets = {}
    for split, n in SPLIT_SIZES.items():
        images = _class_images(rng, n)
        sets[split] = SplitImages.from_classes(
            [(f"synthetic-{split}-{c:03d}", images[c]) for c in range(n)]
        )
    return sets
