"""mini-ImageNet's three on-disk formats, on small generated fixtures."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mamlpp.config import Config, DataConfig
from mamlpp.data import IMAGENET_MEAN, IMAGENET_STD, load_splits, make_episodes
from mamlpp.data import miniimagenet as mi

CLASSES = {"train": 6, "val": 3, "test": 3}
PER_CLASS = 4


def fixture_images() -> dict[str, dict[str, np.ndarray]]:
    """split -> wnid -> uint8 [PER_CLASS, 84, 84, 3], a fixed random dataset."""
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, np.ndarray]] = {}
    wnid = 0
    for split, n in CLASSES.items():
        out[split] = {}
        for _ in range(n):
            wnid += 1
            out[split][f"n{wnid:08d}"] = rng.integers(0, 256, (PER_CLASS, 84, 84, 3), dtype=np.uint8)
    return out


def write_format(folder: Path, fmt: str, data: dict[str, dict[str, np.ndarray]]) -> Path:
    """Write `data` as one of the three formats into `folder` (PNG, so pixels survive)."""
    folder.mkdir(parents=True)
    if fmt == "pickle":
        for split, name in mi.PICKLE_SPLIT.items():
            images = np.concatenate(list(data[split].values()))
            class_dict = {c: list(range(i * PER_CLASS, (i + 1) * PER_CLASS)) for i, c in enumerate(data[split])}
            with open(folder / f"mini-imagenet-cache-{name}.pkl", "wb") as f:
                pickle.dump({"image_data": images, "class_dict": class_dict}, f)
        return folder
    if fmt == "csv":
        (folder / "images").mkdir()
    for split, classes in data.items():
        rows = ["filename,label"]
        for wnid, images in classes.items():
            for i, image in enumerate(images):
                if fmt == "csv":
                    name = f"{wnid}{i:08d}.png"
                    Image.fromarray(image).save(folder / "images" / name)
                    rows.append(f"{name},{wnid}")
                else:
                    (folder / split / wnid).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(image).save(folder / split / wnid / f"{i:04d}.png")
        if fmt == "csv":
            (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.mark.parametrize("fmt", ["csv", "pickle", "folders"])
def test_each_format_reads_the_same_images(tmp_path: Path, fmt: str) -> None:
    data = fixture_images()
    write_format(tmp_path / "miniimagenet", fmt, data)
    assert mi.find_source(tmp_path)[1] == fmt
    sets = load_splits("miniimagenet", tmp_path)
    for split, classes in data.items():
        assert list(sets[split].class_names) == sorted(classes)
        expected = np.concatenate([classes[c] for c in sorted(classes)]).transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(np.asarray(sets[split].images), expected)


def test_other_sizes_and_jpgs_are_resized_to_84(tmp_path: Path) -> None:
    data = fixture_images()
    write_format(tmp_path / "miniimagenet", "folders", data)
    odd = tmp_path / "miniimagenet" / "val" / "n00000007" / "0000.png"
    Image.fromarray(np.zeros((120, 100, 3), np.uint8)).save(odd.with_suffix(".jpg"))
    odd.unlink()
    sets = load_splits("miniimagenet", tmp_path / "miniimagenet")  # the dataset folder itself
    assert sets["val"].images.shape[1:] == (3, 84, 84) and sets["val"].counts.tolist() == [4, 4, 4]


def test_batches_are_scaled_and_normalised_with_imagenet_statistics(tmp_path: Path) -> None:
    data = fixture_images()
    write_format(tmp_path / "miniimagenet", "pickle", data)
    cfg = Config(data=DataConfig(dataset="miniimagenet", n_way=3, k_shot=1, target_per_class=3, rotate_train_classes=True))
    sampler = make_episodes(cfg, "test", tmp_path)
    assert not sampler.rotate  # never rotates mini-ImageNet
    b = sampler.batch([0])
    picks, _ = sampler.episode(0)
    raw = np.asarray(sampler.images.images)[picks[0, 0]].astype(np.float64) / 255.0
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    expected = torch.from_numpy((raw - mean) / std).float()
    assert b.support_x.shape == (1, 3, 3, 84, 84)
    torch.testing.assert_close(b.support_x[0, 0], expected, rtol=0, atol=1e-5)


def test_check_reports_the_fixture_and_that_it_is_not_the_papers_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from mamlpp.cli import main

    monkeypatch.setenv("MAMLPP_CACHE", str(tmp_path / "fresh-cache"))  # same content, same key
    write_format(tmp_path / "miniimagenet", "csv", fixture_images())
    result = CliRunner().invoke(main, ["data", "check", "miniimagenet", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "format: csv" in result.output and "6 classes" in result.output
    assert "64/16/20" in result.output and "not built" in result.output


def test_missing_listed_image_is_named(tmp_path: Path) -> None:
    from mamlpp.errors import DataError

    folder = write_format(tmp_path / "miniimagenet", "csv", fixture_images())
    gone = sorted((folder / "images").iterdir())[5]
    gone.unlink()
    with pytest.raises(DataError, match=f"image {gone} is listed but missing"):
        load_splits("miniimagenet", tmp_path)


def test_csvs_with_a_byte_order_mark_or_blank_lines_read_the_same(tmp_path: Path) -> None:
    data = fixture_images()
    folder = write_format(tmp_path / "miniimagenet", "csv", data)
    for split in ("train", "test"):
        text = (folder / f"{split}.csv").read_text()
        (folder / f"{split}.csv").write_text("\ufeff" + text.replace("\n", "\r\n", 1) + "\n\n", encoding="utf-8")
    sets = load_splits("miniimagenet", tmp_path)  # not 'image images/\ufefffilename is missing'
    assert list(sets["train"].class_names) == sorted(data["train"]) and sets["test"].counts.tolist() == [4, 4, 4]
