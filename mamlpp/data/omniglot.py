"""Omniglot: the two official zips (or their extracted folders) -> 28x28 uint8 splits.

Class split: the 1623 characters of both zips pooled as "alphabet/character", sorted, shuffled by a
numpy RandomState, then cut 1150/50/423 into train/val/test, as the authors' code does
(data.py:176-211 at commit 86964701 of AntreasAntoniou/HowToTrainYourMAMLPytorch). Two shuffle seeds
are offered (`data.omniglot_split`, docs/fidelity.md row 3): 'paper' uses RandomState(0), the raw
val_seed of the configs, which the code shuffled with before its commit ff26bcc0; 'reference-code'
uses RandomState(985773), the seed the released code derives from that val_seed
(RandomState(0).randint(1, 999999), data.py:132-142). The split depends on nothing but the class
names, so it is the same everywhere.
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
SPLIT_SHUFFLE_SEEDS = {"paper": 0, "reference-code": 985773}
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


def class_split(class_names: list[str], choice: str = "paper") -> dict[str, list[str]]:
    """Sorted names, shuffled by RandomState(SPLIT_SHUFFLE_SEEDS[choice]), cut 1150/50/423."""
    names = sorted(class_names)
    order = np.arange(len(names), dtype=np.int32)
    np.random.RandomState(SPLIT_SHUFFLE_SEEDS[choice]).shuffle(order)
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


def build(sources: list[Path], choice: str = "paper") -> ImageSets:
    classes = _decode_classes(sources)
    check_counts({c: len(v) for c, v in classes.items()}, sources[0].parent)
    split = class_split(list(classes), choice)
    return {s: SplitImages.from_classes([(c, classes[c]) for c in names]) for s, names in split.items()}


def source_key(sources: list[Path], choice: str = "paper") -> str:
    """The cache key: the source files' content and, besides the 'paper' split, the split."""
    salt = "omniglot" if choice == "paper" else f"omniglot-split-{choice}"
    return content_key(_source_files(sources), sources[0].parent, salt=salt)


def load(
    root: str | Path | None, rebuild: bool = False, choice: str = "paper"
) -> tuple[ImageSets, Path]:
    """The three splits of `choice` (`data.omniglot_split`) from the cache, building it from
    the source first when needed."""
    if choice not in SPLIT_SHUFFLE_SEEDS:
        raise DataError(
            f"data.omniglot_split={choice!r} is not a valid choice; choose one of "
            f"{list(SPLIT_SHUFFLE_SEEDS)}"
        )
    sources = find_source(root)
    return load_or_build(
        "omniglot",
        source_key(sources, choice),
        lambda: build(sources, choice),
        str(sources[0].parent),
        rebuild,
    )


def download(root: str | Path | None) -> Path:
    """Download the official zips (md5-checked) into `<data root>/omniglot`. Never used by tests."""
    from torchvision.datasets.utils import download_url

    from mamlpp.data.paths import resolve_data_root

    folder = resolve_data_root(root) / "omniglot"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create {folder} ({e.strerror or e}); pass a writable --root"
        ) from None
    for part in PARTS:
        if _part_source(folder, part) is None:
            try:
                download_url(f"{URL}/{part}.zip", str(folder), f"{part}.zip", MD5[part])
            # URLError (no network) is an OSError; torchvision's failed md5 check a RuntimeError
            except (OSError, RuntimeError) as e:
                raise DataError(
                    f"cannot download {URL}/{part}.zip ({e}); check the network, or put the "
                    f"official zips in {folder} yourself"
                ) from None
    return folder
