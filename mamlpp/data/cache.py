"""Preprocessed images per split, and their on-disk cache.

A cache is one folder `<cache root>/<dataset>-<key>/` holding `<split>.npy` (uint8 images
[n, C, H, W], each class's images contiguous) and `meta.json` (class names, counts and each
.npy file's sha256, verified on every load: a damaged file is refused with the rebuild command,
never trained on). The key is
a hash of the source files' content, so a changed source gets a new cache. The folder is built
under a temporary name and renamed into place when complete, so an interrupted build leaves
nothing that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mamlpp.data.paths import CACHE_ENV, cache_root
from mamlpp.errors import DataError

CACHE_FORMAT = 1
"""Bump when the preprocessing changes; caches of another format are refused."""
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitImages:
    """All images of one split: `images[offsets[c]:offsets[c + 1]]` belong to class c."""

    images: np.ndarray
    offsets: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_classes(cls, classes: list[tuple[str, np.ndarray]]) -> SplitImages:
        """Build from (class name, uint8 images [n_c, C, H, W]) pairs, in that order."""
        counts = [len(imgs) for _, imgs in classes]
        return cls(
            images=np.ascontiguousarray(np.concatenate([imgs for _, imgs in classes])),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            class_names=tuple(name for name, _ in classes),
        )


ImageSets = dict[str, SplitImages]


def content_key(files: Iterable[Path], base: Path, salt: str = "") -> str:
    """sha256 over each file's path relative to `base` and its bytes (files in sorted order).

    Hashing a large source on every run start would be slow, so the key is remembered under the
    cache root by a signature of the files' paths, sizes and modification times: a file whose
    content changes gets a new size or time, hence a new signature and a freshly hashed key."""
    files = sorted(files)
    memo = cache_root() / "keys" / f"{_stat_signature(files, base, salt)}.txt"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        remembered = memo.read_text().strip()
        if _is_key(remembered):  # a damaged memo is ignored (and rewritten), never a key
            return remembered
    h = hashlib.sha256(salt.encode())
    for path in files:
        h.update(str(path.relative_to(base)).encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    key = h.hexdigest()[:20]
    _write_atomic(memo, key)
    return key


def _is_key(text: str) -> bool:
    return len(text) == 20 and all(c in "0123456789abcdef" for c in text)


def _stat_signature(files: list[Path], base: Path, salt: str) -> str:
    h = hashlib.sha256(f"{salt}\0{base.resolve()}".encode())
    for path in files:
        st = path.stat()
        h.update(f"{path.relative_to(base)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:32]


def _write_atomic(path: Path, text: str) -> None:
    """Best effort (a memo only): temporary name, then rename; silently skipped if unwritable."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def cache_dir(dataset: str, key: str) -> Path:
    return cache_root() / f"{dataset}-{key}"


def load_cache(dataset: str, key: str) -> ImageSets | None:
    """The cached splits, None when not built; DataError when the cache cannot be trusted."""
    folder = cache_dir(dataset, key)
    if not folder.exists():
        return None
    fix = f"run `mamlpp data prepare {dataset} --rebuild` (or delete {folder})"
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cache {folder} has no readable meta.json ({e}); {fix}") from None
    if not isinstance(meta, dict):
        raise DataError(f"cache {folder} has a meta.json that is not a cache's; {fix}")
    if meta.get("format") != CACHE_FORMAT or meta.get("source_key") != key:
        raise DataError(
            f"cache {folder} was built from another source version (format "
            f"{meta.get('format')}, source {meta.get('source_key')}; expected format "
            f"{CACHE_FORMAT}, source {key}); {fix}"
        )
    try:
        sums = meta.get("sha256") or {}  # caches written before checksums have none
        splits = {s: _split_meta(meta["splits"][s]) for s in SPLITS}
        return {s: _load_split(folder, s, splits[s], fix, sums.get(s)) for s in SPLITS}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(
            f"cache {folder} has a damaged meta.json ({type(e).__name__}: {e}); {fix}"
        ) from None


def _split_meta(meta: dict) -> dict:
    """A split's entry of meta.json, checked: as many class names as counts, counts >= 0."""
    classes, counts = meta["classes"], meta["counts"]
    if (
        not isinstance(classes, list)
        or not isinstance(counts, list)
        or len(classes) != len(counts)
        or not all(isinstance(n, int) and n >= 0 for n in counts)
    ):
        raise ValueError("its class names and counts do not match")
    return meta


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_split(folder: Path, split: str, meta: dict, fix: str, sha256: str | None) -> SplitImages:
    path = folder / f"{split}.npy"
    try:
        if sha256 is not None and file_sha256(path) != sha256:
            raise DataError(f"cache file {path} fails its checksum (the file was damaged); {fix}")
        images = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
        raise DataError(
            f"cache file {path} is unreadable ({type(e).__name__}: {e}); {fix}"
        ) from None
    counts = meta["counts"]
    if images.ndim != 4 or images.shape[0] != sum(counts) or images.dtype != np.uint8:
        raise DataError(f"cache file {folder / split}.npy does not match meta.json; {fix}")
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return SplitImages(images, offsets, tuple(meta["classes"]))


def write_cache(dataset: str, key: str, sets: ImageSets, source: str) -> Path:
    """Write the cache atomically (temporary folder, then rename); returns its folder."""
    final = cache_dir(dataset, key)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _remove_stale_builds(final)
        tmp.mkdir(parents=True)
        for split in SPLITS:
            np.save(tmp / f"{split}.npy", np.ascontiguousarray(sets[split].images))
        meta = {
            "format": CACHE_FORMAT,
            "dataset": dataset,
            "source_key": key,
            "source": source,
            "splits": {
                s: {"classes": list(sets[s].class_names), "counts": sets[s].counts.tolist()}
                for s in SPLITS
            },
            "sha256": {s: file_sha256(tmp / f"{s}.npy") for s in SPLITS},
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "meta.json").exists():  # not a finished cache by a parallel build
                raise
    except OSError as e:
        raise DataError(
            f"cannot write the cache to {final.parent} ({e.strerror or e}); set {CACHE_ENV} "
            f"to a writable folder"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _remove_stale_builds(final: Path, max_age_s: float = 6 * 3600) -> None:
    """Delete temporary folders of builds of this cache that were killed (older than 6 hours)."""
    if not final.parent.is_dir():
        return
    now = time.time()
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > max_age_s:
                shutil.rmtree(tmp)


def load_or_build(
    dataset: str, key: str, build: Callable[[], ImageSets], source: str, rebuild: bool = False
) -> tuple[ImageSets, Path]:
    """The cached splits, building and caching them first when missing (or when `rebuild`)."""
    folder = cache_dir(dataset, key)
    if rebuild and folder.exists():
        shutil.rmtree(folder)
    sets = load_cache(dataset, key)
    if sets is None:
        write_cache(dataset, key, build(), source)
        sets = load_cache(dataset, key)
        assert sets is not None
    return sets, folder
