"""Cache keys follow the source content; the hash memo never hides a change."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

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


def _tiny_sets() -> dict:
    import numpy as np

    from mamlpp.data.cache import SplitImages

    split = SplitImages.from_classes(
        [("a", np.arange(32, dtype=np.uint8).reshape(2, 1, 4, 4)), ("b", np.ones((3, 1, 4, 4), np.uint8))]
    )
    return {"train": split, "val": split, "test": split}


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: m.pop("splits"),
        lambda m: m["splits"]["val"].update(classes=["a"]),  # 1 name for 2 counts
        lambda m: m["splits"]["test"].update(counts="23"),
        lambda m: m.update(sha256=["x"]),
    ],
)
def test_a_damaged_meta_json_is_a_data_error(damage: Callable[[dict], object]) -> None:
    from mamlpp.data.cache import cache_dir, load_cache, write_cache
    from mamlpp.errors import DataError

    write_cache("synthetic", "meta1", _tiny_sets(), "test")
    path = cache_dir("synthetic", "meta1") / "meta.json"
    meta = json.loads(path.read_text())
    damage(meta)
    path.write_text(json.dumps(meta))
    try:
        with pytest.raises(DataError, match=r"damaged meta.json .*--rebuild"):
            load_cache("synthetic", "meta1")
        path.write_text("[]")
        with pytest.raises(DataError, match="not a cache's"):
            load_cache("synthetic", "meta1")
    finally:
        shutil.rmtree(path.parent)


@pytest.mark.parametrize("memo_text", ["", "garbage\n", "0123456789abcdef012"])
def test_a_damaged_key_memo_is_recomputed_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memo_text: str) -> None:
    monkeypatch.setenv("MAMLPP_CACHE", str(tmp_path / "cache"))
    files = _source(tmp_path / "src", b"hello")
    key = content_key(files, tmp_path / "src")
    [memo] = (cache_root() / "keys").glob("*.txt")
    memo.write_text(memo_text)  # e.g. a disk filled up while it was written
    assert content_key(files, tmp_path / "src") == key  # not '' (the cache folder 'omniglot-')
    assert memo.read_text() == key  # and rewritten


def test_a_damaged_cache_file_is_refused_and_rebuild_repairs_it() -> None:
    """docs/data.md: the .npy files are checked against meta.json's sha256 on every load."""
    import numpy as np

    from mamlpp.data.cache import cache_dir, load_cache, load_or_build, write_cache
    from mamlpp.errors import DataError

    write_cache("synthetic", "dmg", _tiny_sets(), "test")
    path = cache_dir("synthetic", "dmg") / "train.npy"
    good = path.read_bytes()
    for damaged in (good[:-7], good[:-1] + bytes([good[-1] ^ 1]), b""):  # truncated, one bit, empty
        path.write_bytes(damaged)
        with pytest.raises(DataError, match=r"train.npy fails its checksum.*--rebuild"):
            load_cache("synthetic", "dmg")
    sets, _ = load_or_build("synthetic", "dmg", _tiny_sets, "test", rebuild=True)
    assert np.array_equal(sets["train"].images, _tiny_sets()["train"].images)


def test_concurrent_builds_of_one_cache_give_one_intact_cache() -> None:
    import threading

    import numpy as np

    from mamlpp.data.cache import cache_dir, load_or_build

    start = threading.Barrier(4)
    results: list[object] = []

    def build() -> dict:
        start.wait()  # every builder is past its cache lookup: they all write at once
        return _tiny_sets()

    def one() -> None:
        try:
            results.append(load_or_build("synthetic", "race", build, "test")[0])
        except BaseException as e:  # noqa: BLE001 (reported below)
            results.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(isinstance(r, dict) for r in results), results
    for r in results:
        assert np.array_equal(r["val"].images, _tiny_sets()["val"].images)  # type: ignore[index]
    folder = cache_dir("synthetic", "race")
    assert [p.name for p in folder.parent.glob(f".{folder.name}.tmp-*")] == []  # no leftovers


def test_a_read_only_cache_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod does not stop root, so the refusal is simulated where the build creates its folder."""
    from mamlpp.data import cache
    from mamlpp.errors import DataError

    monkeypatch.setenv("MAMLPP_CACHE", str(tmp_path / "ro"))
    real_mkdir = Path.mkdir

    def refused(self: Path, *args: object, **kwargs: object) -> None:
        if str(self).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", refused)
    with pytest.raises(DataError, match=r"cannot write the cache to .*Permission denied.*set MAMLPP_CACHE"):
        cache.load_or_build("synthetic", "ro", _tiny_sets, "test")
