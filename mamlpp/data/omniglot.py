"""Omniglot: the two official zips (or their extracted folders) -> 28x28 uint8 splits.

Class split of the original code: the 1623 characters of both zips pooled as "alphabet/character",
sorted, shuffled by numpy's RandomState(0) (its fixed validation seed), then cut 1150/50/423 into
train/val/test. The split depends on nothing but the class names, so it is the same everywhere.
"""

from __future__ import annotations

import zipfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mamlpp.data.cache import ImageSets, SplitImages, content_key, load_or_build
from mamlpp.data.images import omniglot_pixels, open_image
from mamlpp.data.paths import dataset_dir
from mamlpp.errors import DataError

PARTS = ("images_background", "images_evaluation")
NUM_CLASSES, IMAGES_PER_CLASS, SOURCE_SIZE, IMAGE_SIZE = 1623, 20, 105, 28
SPLIT_SIZES = {"train": 1150, "val": 50, "test": 423}
SPLIT_SHUFFLE_SEED = 0
URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
FIX = "re-extract the official zips or run `mamlpp data prepare omniglot --download`"


def _part_source(folder: Path, part: str) -> Path | None:
    """The zip or extracted folder of one part, also in torchvision's `omniglot-py/` layout."""
    for base in (folder, folder / "omniglot-py"):
        if (base / f"{part}.zip").is_file():
            return base / f"{part}.zip"
        if (base / part).is_dir():
            return base / part
    return None


def _looks_like_omniglot(folder: Path) -> bool:
    return any(_part_source(folder, p) is not None for p in PARTS)


def find_source(root: str | Path | None) -> list[Path]:
    """The two parts (zip or folder each) under the data root; DataError naming what is missing."""
    folder = dataset_dir(root, "omniglot", _looks_like_omniglot)
    sources = [_part_source(folder, p) for p in PARTS]
    missing = [p for p, s in zip(PARTS, sources, strict=True) if s is None]
    if missing:
        raise DataError(
            f"Omniglot in {folder} lacks {' and '.join(m + '.zip' for m in missing)} (or the "
            f"extracted folder); put both official zips there or run "
            f"`mamlpp data prepare omniglot --download`"
        )
    return [s for s in sources if s is not None]


def _source_files(sources: list[Path]) -> list[Path]:
    return [f for s in sources for f in ([s] if s.is_file() else sorted(s.glob("*/*/*.png")))]


def _iter_pngs(source: Path) -> Iterator[tuple[str, str, bytes]]:
    """(class "alphabet/character", file name for messages, PNG bytes) of one part."""
    if source.is_dir():
        for png in sorted(source.glob("*/*/*.png")):
            yield f"{png.parent.parent.name}/{png.parent.name}", str(png), png.read_bytes()
        return
    try:
        with zipfile.ZipFile(source) as zf:
            for name in sorted(n for n in zf.namelist() if n.endswith(".png")):
                parts = name.split("/")
                if len(parts) != 4:
                    continue
                yield f"{parts[1]}/{parts[2]}", f"{source}:{name}", zf.read(name)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(f"cannot read zip {source} (corrupt or truncated: {e}); {FIX}") from None


def _decode_classes(sources: list[Path]) -> dict[str, np.ndarray]:
    """Every class's images as uint8 [20, 1, 28, 28], checking sizes as they are read."""
    images: dict[str, list[np.ndarray]] = defaultdict(list)
    for source in sources:
        for cls, name, data in _iter_pngs(source):
            image = open_image(data, name, FIX)
            if image.size != (SOURCE_SIZE, SOURCE_SIZE):
                raise DataError(
                    f"image {name} is {image.size[0]}x{image.size[1]} but Omniglot drawings are "
                    f"{SOURCE_SIZE}x{SOURCE_SIZE} (images of mixed sizes); {FIX}"
                )
            images[cls].append(omniglot_pixels(image, IMAGE_SIZE)[None])
    return {cls: np.stack(imgs) for cls, imgs in images.items()}


def check_counts(counts: dict[str, int], where: Path | str) -> None:
    """Exactly 1623 characters x 20 drawings, else a DataError saying what differs."""
    wrong = {c: n for c, n in counts.items() if n != IMAGES_PER_CLASS}
    if len(counts) != NUM_CLASSES or wrong:
        detail = f"{len(counts)} characters (expected {NUM_CLASSES})"
        if wrong:
            cls, n = sorted(wrong.items())[0]
            detail += f"; {cls} has {n} drawings (expected {IMAGES_PER_CLASS})"
        raise DataError(f"Omniglot in {where} is incomplete: {detail}; {FIX}")


def class_split(class_names: list[str]) -> dict[str, list[str]]:
    """The original code's split: sorted names, RandomState(0) shuffle, cut 1150/50/423."""
    names = sorted(class_names)
    order = np.arange(len(names), dtype=np.int32)
    np.random.RandomState(SPLIT_SHUFFLE_SEED).shuffle(order)
    shuffled = [names[i] for i in order]
    a, b = SPLIT_SIZES["train"], SPLIT_SIZES["train"] + SPLIT_SIZES["val"]
    return {"train": shuffled[:a], "val": shuffled[a:b], "test": shuffled[b:]}


def count_classes(sources: list[Path]) -> dict[str, int]:
    """Drawings per class from the file listing alone (no decoding)."""
    counts: dict[str, int] = defaultdict(int)
    for source in sources:
        if source.is_dir():
            names = [str(p.relative_to(source.parent)) for p in source.glob("*/*/*.png")]
        else:
            try:
                with zipfile.ZipFile(source) as zf:
                    names = [n for n in zf.namelist() if n.endswith(".png")]
            except (zipfile.BadZipFile, OSError) as e:
                raise DataError(f"cannot read zip {source} ({e}); {FIX}") from None
        for n in names:
            parts = n.split("/")
            if len(parts) == 4:
                counts[f"{parts[1]}/{parts[2]}"] += 1
    return dict(counts)


def build(sources: list[Path]) -> ImageSets:
    classes = _decode_classes(sources)
    check_counts({c: len(v) for c, v in classes.items()}, sources[0].parent)
    split = class_split(list(classes))
    return {s: SplitImages.from_classes([(c, classes[c]) for c in names]) for s, names in split.items()}


def source_key(sources: list[Path]) -> str:
    return content_key(_source_files(sources), sources[0].parent, salt="omniglot")


def load(root: str | Path | None, rebuild: bool = False) -> tuple[ImageSets, Path]:
    """The three splits from the cache, building it from the source first when needed."""
    sources = find_source(root)
    return load_or_build(
        "omniglot", source_key(sources), lambda: build(sources), str(sources[0].parent), rebuild
    )


def download(root: str | Path | None) -> Path:
    """Download the official zips (md5-checked) into `<data root>/omniglot`. Never used by tests."""
    from torchvision.datasets.utils import download_url

    from mamlpp.data.paths import resolve_data_root

    folder = resolve_data_root(root) / "omniglot"
    for part in PARTS:
        if _part_source(folder, part) is None:
            download_url(f"{URL}/{part}.zip", str(folder), f"{part}.zip", MD5[part])
    return folder
