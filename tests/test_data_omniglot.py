"""The real Omniglot from the shared data root: counts, splits, pixels, cache."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mamlpp.data import load_splits, omniglot
from mamlpp.data.cache import cache_dir


@pytest.fixture(scope="module")
def sets(shared_data_root: Path) -> dict:
    return load_splits("omniglot", shared_data_root)


def test_split_sizes_and_shapes(sets: dict) -> None:
    assert {s: v.num_classes for s, v in sets.items()} == {"train": 1150, "val": 50, "test": 423}
    for v in sets.values():
        assert set(v.counts.tolist()) == {20}
        assert v.images.shape[1:] == (1, 28, 28) and v.images.dtype == np.uint8


def test_splits_disjoint_and_cover_every_character(sets: dict) -> None:
    names = [set(v.class_names) for v in sets.values()]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert len(names[0] | names[1] | names[2]) == 1623


def test_split_is_the_original_codes_shuffle(sets: dict) -> None:
    """Independent recomputation: sorted names permuted by RandomState(0).permutation."""
    names = sorted(n for v in sets.values() for n in v.class_names)
    order = np.random.RandomState(0).permutation(len(names))
    assert list(sets["val"].class_names) == [names[i] for i in order[1150:1200]]
    assert list(sets["train"].class_names)[:3] == [names[i] for i in order[:3]]


def test_pixels_are_binary_with_white_background(sets: dict) -> None:
    train = np.asarray(sets["train"].images)
    assert set(np.unique(train).tolist()) == {0, 1}
    assert 0.85 < train.mean() < 0.97  # strokes (0) are a small fraction of each drawing


def _first_png(zip_path: Path, class_name: str) -> Image.Image:
    alphabet, character = class_name.split("/")
    with zipfile.ZipFile(zip_path) as zf:
        name = sorted(n for n in zf.namelist() if f"/{alphabet}/{character}/" in n)[0]
        return Image.open(io.BytesIO(zf.read(name)))


def test_cached_image_is_the_original_codes_resize(sets: dict, shared_data_root: Path) -> None:
    """The original code's call resize(LANCZOS) on the 1-bit PNG gives our cached pixels."""
    cls = sets["test"].class_names[0]
    image = None
    for part in omniglot.PARTS:
        try:
            image = _first_png(shared_data_root / "omniglot" / f"{part}.zip", cls)
            break
        except IndexError:
            continue
    assert image is not None and image.mode == "1" and image.size == (105, 105)
    expected = np.array(image.resize((28, 28), resample=Image.LANCZOS), np.float32)
    first = np.asarray(sets["test"].images[0, 0], np.float32)
    np.testing.assert_array_equal(first, expected)


def test_cache_is_reused_and_keyed_by_source(shared_data_root: Path) -> None:
    sets1, folder1 = omniglot.load(shared_data_root)
    sets2, folder2 = omniglot.load(shared_data_root / "omniglot")  # the dataset folder itself
    assert folder1 == folder2 and (folder1 / "meta.json").exists()
    assert np.array_equal(sets1["val"].images, sets2["val"].images)
    key = omniglot.source_key(omniglot.find_source(shared_data_root))
    assert folder1 == cache_dir("omniglot", key)


def _write_tiny_omniglot(folder: Path, as_zip: bool) -> None:
    """6 characters x 2 drawings (3 per part), as zips or as extracted folders."""
    rng = np.random.default_rng(0)
    for p, part in enumerate(omniglot.PARTS):
        members = {}
        for c in range(3):
            for d in range(2):
                pixels = rng.random((105, 105)) < 0.9
                buf = io.BytesIO()
                Image.fromarray(pixels).convert("1").save(buf, format="PNG")
                members[f"{part}/Alpha{p}/character{c + 1:02d}/{c + 1:04d}_{d + 1:02d}.png"] = buf.getvalue()
        if as_zip:
            folder.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(folder / f"{part}.zip", "w") as zf:
                for name, data in members.items():
                    zf.writestr(name, data)
        else:
            for name, data in members.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)


def test_zips_and_extracted_folders_give_the_same_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(omniglot, "NUM_CLASSES", 6)
    monkeypatch.setattr(omniglot, "IMAGES_PER_CLASS", 2)
    monkeypatch.setattr(omniglot, "SPLIT_SIZES", {"train": 3, "val": 1, "test": 2})
    _write_tiny_omniglot(tmp_path / "zips" / "omniglot", as_zip=True)
    _write_tiny_omniglot(tmp_path / "folders" / "omniglot" / "omniglot-py", as_zip=False)  # torchvision layout
    from_zip, zip_cache = omniglot.load(tmp_path / "zips")
    from_folders, folder_cache = omniglot.load(tmp_path / "folders")
    assert zip_cache != folder_cache  # different source files, different cache keys
    assert {s: v.num_classes for s, v in from_zip.items()} == {"train": 3, "val": 1, "test": 2}
    for split in from_zip:
        assert from_zip[split].class_names == from_folders[split].class_names
        np.testing.assert_array_equal(from_zip[split].images, from_folders[split].images)
