"""Cache keys follow the source content; the hash memo never hides a change."""

from __future__ import annotations

import os
from pathlib import Path

from mamlpp.data.cache import cache_root, content_key


def _source(folder: Path, data: bytes) -> list[Path]:
    folder.mkdir(parents=True)
    (folder / "a.bin").write_bytes(data)
    (folder / "b.bin").write_bytes(b"fixed")
    return [folder / "a.bin", folder / "b.bin"]


def test_key_depends_on_content_not_location(tmp_path: Path) -> None:
    one = content_key(_source(tmp_path / "one", b"hello"), tmp_path / "one")
    two = content_key(_source(tmp_path / "two", b"hello"), tmp_path / "two")
    other = content_key(_source(tmp_path / "three", b"HELLO"), tmp_path / "three")
    assert one == two != other
    assert list((cache_root() / "keys").glob("*.txt"))  # remembered for the next run


def test_same_size_edit_gets_a_new_key(tmp_path: Path) -> None:
    files = _source(tmp_path / "src", b"hello")
    before = content_key(files, tmp_path / "src")
    assert content_key(files, tmp_path / "src") == before  # memo hit
    st = files[0].stat()
    files[0].write_bytes(b"jello")
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert content_key(files, tmp_path / "src") != before


def test_a_killed_builds_leftovers_are_removed_later(tmp_path: Path) -> None:
    import numpy as np

    from mamlpp.data.cache import SplitImages, cache_dir, load_cache, write_cache

    final = cache_dir("synthetic", "k1")
    stale = final.parent / f".{final.name}.tmp-999-dead"
    fresh = final.parent / f".{final.name}.tmp-998-busy"  # maybe a build still running
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
    os.utime(stale, (0, 0))
    split = SplitImages.from_classes([("c", np.zeros((2, 1, 4, 4), np.uint8))])
    write_cache("synthetic", "k1", {"train": split, "val": split, "test": split}, "test")
    assert not stale.exists() and fresh.exists()
    cached = load_cache("synthetic", "k1")
    assert cached is not None and cached["val"].class_names == ("c",)
