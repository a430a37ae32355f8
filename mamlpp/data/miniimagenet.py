"""mini-ImageNet (Ravi & Larochelle split, 64/16/20 classes) from any of its three common formats.

(a) `images/` + `train.csv`, `val.csv`, `test.csv` with `filename,label` rows;
(b) pickles `mini-imagenet-cache-{train,validation,test}.pkl` with `image_data` (N x 84 x 84 x 3
    uint8) and `class_dict` (class -> image indices);
(c) folders `{train,val,test}/<class>/*.jpg`.
Images become uint8 [3, 84, 84] (Lanczos resize where needed); normalisation happens per batch.
"""

from __future__ import annotations

import csv
import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np

from mamlpp.data.cache import SPLITS, ImageSets, SplitImages, content_key, load_or_build
from mamlpp.data.images import open_image, rgb_pixels
from mamlpp.data.paths import dataset_dir
from mamlpp.errors import DataError

IMAGE_SIZE = 84
PICKLE_SPLIT = {"train": "train", "val": "validation", "test": "test"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
FIX = "re-copy the dataset (docs/data.md lists the accepted formats)"
LAYOUTS = (
    "images/ with train.csv, val.csv, test.csv; "
    "or mini-imagenet-cache-{train,validation,test}.pkl; or {train,val,test}/<class>/*.jpg"
)


def detect_format(folder: Path) -> str | None:
    if (folder / "images").is_dir() and all((folder / f"{s}.csv").is_file() for s in SPLITS):
        return "csv"
    if all((folder / f"mini-imagenet-cache-{p}.pkl").is_file() for p in PICKLE_SPLIT.values()):
        return "pickle"
    if all((folder / s).is_dir() for s in SPLITS):
        return "folders"
    return None


def _partial_layouts(folder: Path) -> list[str]:
    """What each layout of which `folder` holds some but not all pieces lacks, e.g. 'test/'."""
    pieces = {
        "csv": ["images/", *(f"{s}.csv" for s in SPLITS)],
        "pickle": [f"mini-imagenet-cache-{p}.pkl" for p in PICKLE_SPLIT.values()],
        "folders": [f"{s}/" for s in SPLITS],
    }
    out = []
    for layout, names in pieces.items():
        missing = [n for n in names if not (folder / n.rstrip("/")).exists()]
        if 0 < len(missing) < len(names):
            out.append(f"{' and '.join(missing)} of the {layout} layout")
    return out


def find_source(root: str | Path | None) -> tuple[Path, str]:
    """(dataset folder, format name); DataError when no known layout is there, naming what a
    partly present layout lacks (a missing split)."""
    folder = dataset_dir(root, "miniimagenet", lambda p: detect_format(p) is not None)
    fmt = detect_format(folder)
    if fmt is None:
        partial = _partial_layouts(folder)
        if partial:
            raise DataError(
                f"mini-ImageNet in {folder} lacks {'; and '.join(partial)}; expected {LAYOUTS}"
            )
        raise DataError(f"no mini-ImageNet layout recognised in {folder}; expected {LAYOUTS}")
    return folder, fmt


def _csv_listing(folder: Path) -> dict[str, dict[str, list[Path]]]:
    listing: dict[str, dict[str, list[Path]]] = {}
    for split in SPLITS:
        classes: dict[str, list[Path]] = defaultdict(list)
        with open(folder / f"{split}.csv", newline="", encoding="utf-8-sig") as f:  # BOM or not
            for row in csv.reader(f):
                if not any(cell.strip() for cell in row):
                    continue  # a blank line
                if len(row) != 2:
                    raise DataError(f"{folder / split}.csv has a row {row!r}; expected filename,label")
                if row == ["filename", "label"]:
                    continue
                classes[row[1]].append(folder / "images" / row[0])
        listing[split] = classes
    return listing


def _folder_listing(folder: Path) -> dict[str, dict[str, list[Path]]]:
    return {
        split: {
            c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for c in sorted((folder / split).iterdir())
            if c.is_dir()
        }
        for split in SPLITS
    }


def _listing(folder: Path, fmt: str) -> dict[str, dict[str, list[Path]]]:
    return _csv_listing(folder) if fmt == "csv" else _folder_listing(folder)


def _decode_files(listing: dict[str, dict[str, list[Path]]]) -> ImageSets:
    sets = {}
    for split, classes in listing.items():
        decoded = []
        for name in sorted(classes):
            images = []
            for path in classes[name]:
                if not path.is_file():
                    raise DataError(f"image {path} listed for class {name} is missing; {FIX}")
                images.append(rgb_pixels(open_image(path.read_bytes(), str(path), FIX), IMAGE_SIZE))
            if not images:
                raise DataError(
                    f"class {name} of the mini-ImageNet {split} split has no images "
                    f"({', '.join(sorted(IMAGE_SUFFIXES))}); remove its folder or {FIX}"
                )
            decoded.append((name, np.stack(images)))
        sets[split] = _nonempty(split, decoded)
    return sets


def _nonempty(split: str, classes: list[tuple[str, np.ndarray]]) -> SplitImages:
    if not classes:
        raise DataError(f"mini-ImageNet split {split} has no classes; {FIX}")
    return SplitImages.from_classes(classes)


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
        images, class_dict = data["image_data"], data["class_dict"]
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise DataError(
            f"cannot read {path} (corrupt, truncated, or not a mini-ImageNet cache with "
            f"image_data and class_dict: {e!r}); {FIX}"
        ) from None
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or images.dtype != np.uint8:
        raise DataError(
            f"{path} holds images of shape {images.shape[1:]} {images.dtype}; expected "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}x3 uint8; {FIX}"
        )
    return {"images": images, "class_dict": class_dict}


def _class_indices(path: Path, name: object, indices: object, num_images: int) -> np.ndarray:
    """A pickle's image indices of one class, checked against its `image_data`."""
    try:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        idx = None
    if idx is None or (len(idx) and (idx.min() < 0 or idx.max() >= num_images)):
        raise DataError(
            f"{path} lists images {indices!r:.60} for class {name}, but its image_data holds "
            f"images 0..{num_images - 1} only; {FIX}"
        )
    return idx


def _decode_pickles(folder: Path) -> ImageSets:
    sets = {}
    for split, name in PICKLE_SPLIT.items():
        path = folder / f"mini-imagenet-cache-{name}.pkl"
        data = _load_pickle(path)
        chw = data["images"].transpose(0, 3, 1, 2)
        classes = [(str(c), chw[_class_indices(path, c, idx, len(chw))]) for c, idx in sorted(data["class_dict"].items())]
        sets[split] = _nonempty(split, classes)
    return sets


def _source_files(folder: Path, fmt: str) -> list[Path]:
    if fmt == "pickle":
        return [folder / f"mini-imagenet-cache-{p}.pkl" for p in PICKLE_SPLIT.values()]
    files = [p for classes in _listing(folder, fmt).values() for ps in classes.values() for p in ps]
    extra = [folder / f"{s}.csv" for s in SPLITS] if fmt == "csv" else []
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise DataError(f"image {missing[0]} is listed but missing; {FIX}")
    return sorted(set(files)) + extra


def count_classes(root: str | Path | None) -> tuple[Path, str, dict[str, dict[str, int]]]:
    """(folder, format, split -> class -> image count) without decoding images."""
    folder, fmt = find_source(root)
    if fmt == "pickle":
        counts = {}
        for split, name in PICKLE_SPLIT.items():
            cd = _load_pickle(folder / f"mini-imagenet-cache-{name}.pkl")["class_dict"]
            counts[split] = {str(c): len(v) for c, v in cd.items()}
    else:
        listing = _listing(folder, fmt)
        counts = {s: {c: len(ps) for c, ps in cl.items()} for s, cl in listing.items()}
    check_disjoint({s: list(c) for s, c in counts.items()}, folder)
    return folder, fmt, counts


def check_disjoint(class_names: dict[str, list[str]], folder: Path) -> None:
    """No class in two splits (its test tasks would be classes the learner trained on)."""
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            shared = sorted(set(class_names[a]) & set(class_names[b]))
            if shared:
                raise DataError(
                    f"mini-ImageNet in {folder}: class {shared[0]} is in both the {a} and the {b} "
                    f"split ({len(shared)} shared); few-shot splits need disjoint classes; {FIX}"
                )


def source_key(folder: Path, fmt: str) -> str:
    return content_key(_source_files(folder, fmt), folder, salt=f"miniimagenet-{fmt}")


def decode(folder: Path, fmt: str) -> ImageSets:
    """Every image of the source decoded (DataError naming a file that does not decode, or a
    class in two splits)."""
    sets = _decode_pickles(folder) if fmt == "pickle" else _decode_files(_listing(folder, fmt))
    check_disjoint({s: list(v.class_names) for s, v in sets.items()}, folder)
    return sets


def load(root: str | Path | None, rebuild: bool = False) -> tuple[ImageSets, Path]:
    folder, fmt = find_source(root)
    key = source_key(folder, fmt)
    return load_or_build("miniimagenet", key, lambda: decode(folder, fmt), f"{folder} ({fmt})", rebuild)
