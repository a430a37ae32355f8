"""Decoding one image file into a uint8 array, with errors that name the file."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from mamlpp.errors import DataError


def open_image(data: bytes, name: str, fix: str) -> Image.Image:
    """Decode image bytes fully; a corrupt or truncated file is a DataError naming it."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read image {name} (corrupt or truncated: {e}); {fix}") from None
    return image


def omniglot_pixels(image: Image.Image, size: int) -> np.ndarray:
    """A 1-bit Omniglot drawing as uint8 0/1 [size, size] (background 1, strokes 0).

    The original code calls `resize(..., LANCZOS)` on the 1-bit image, which Pillow performs as
    nearest-neighbour for mode "1"; we ask for NEAREST explicitly (same pixels, see the tests)."""
    if image.mode != "1":
        gray = np.asarray(image.convert("L").resize((size, size), Image.Resampling.NEAREST))
        return (gray > 127).astype(np.uint8)
    return np.asarray(image.resize((size, size), Image.Resampling.NEAREST), dtype=np.uint8)


def rgb_pixels(image: Image.Image, size: int) -> np.ndarray:
    """An RGB photo as uint8 [3, size, size]; resized with Lanczos (as the common mini-ImageNet
    tools do) unless it already has that size."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
