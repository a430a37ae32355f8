"""Bad input: one-line DataErrors naming the problem and the fix; CLI exit code 2; atomic cache."""

from __future__ import annotations

import json
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image
from test_data_miniimagenet import fixture_images, write_format

from mamlpp.cli import main
from mamlpp.config import Config, DataConfig
from mamlpp.data import cache, load_splits, make_episodes, omniglot, resolve_data_root
from mamlpp.errors import DataError


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_user_error(result: Result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    [line] = result.stderr.strip().splitlines()  # the message is one line on stderr
    assert line.startswith("error: ")
    for w in words:
        assert w in line


def png(size: tuple[int, int] = (105, 105)) -> bytes:
    buf = BytesIO()
    Image.new("1", size, 1).save(buf, format="PNG")
    return buf.getvalue()


def fake_omniglot(root: Path, members: dict[str, bytes]) -> Path:
    """Tiny Omniglot zips: members are 'images_background/Alphabet/character01/0001_01.png'."""
    folder = root / "omniglot"
    folder.mkdir(parents=True)
    for part in omniglot.PARTS:
        with zipfile.ZipFile(folder / f"{part}.zip", "w") as zf:
            for name, data in members.items():
                if name.startswith(part + "/"):
                    zf.writestr(name, data)
    return root


def test_data_root_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMLPP_DATA", "/from/env")
    assert resolve_data_root("/given") == Path("/given")
    assert resolve_data_root(None) == Path("/from/env")
    monkeypatch.delenv("MAMLPP_DATA")
    assert resolve_data_root(None) == Path("data")


def test_missing_root(tmp_path: Path) -> None:
    assert_user_error(cli("data", "check", "omniglot", "--root", str(tmp_path / "nope")), "does not exist", "MAMLPP_DATA")


def test_root_with_wrong_layout(tmp_path: Path) -> None:
    # a missing dataset names the command that fetches it (docs/data.md)
    assert_user_error(
        cli("data", "check", "omniglot", "--root", str(tmp_path)),
        "no omniglot/ folder",
        "mamlpp data prepare omniglot --download",
    )
    (tmp_path / "omniglot").mkdir()
    assert_user_error(cli("data", "prepare", "omniglot", "--root", str(tmp_path)), "images_background.zip", "--download")
    (tmp_path / "miniimagenet").mkdir()
    assert_user_error(cli("data", "check", "miniimagenet", "--root", str(tmp_path)), "no mini-ImageNet layout")


def test_truncated_image_is_named(tmp_path: Path) -> None:
    bad = "images_evaluation/Alpha/character02/0002_01.png"
    root = fake_omniglot(tmp_path, {"images_background/Beta/character01/0001_01.png": png(), bad: png()[:40]})
    assert_user_error(cli("data", "prepare", "omniglot", "--root", str(root)), bad, "corrupt or truncated")


def test_truncated_zip_is_named(tmp_path: Path) -> None:
    root = fake_omniglot(tmp_path, {"images_background/Beta/character01/0001_01.png": png()})
    zip_path = root / "omniglot" / "images_background.zip"
    zip_path.write_bytes(zip_path.read_bytes()[:30])
    assert_user_error(cli("data", "prepare", "omniglot", "--root", str(root)), "images_background.zip")


def test_images_of_mixed_sizes(tmp_path: Path) -> None:
    odd = "images_background/Beta/character01/0001_02.png"
    root = fake_omniglot(tmp_path, {"images_background/Beta/character01/0001_01.png": png(), odd: png((100, 105))})
    assert_user_error(cli("data", "prepare", "omniglot", "--root", str(root)), odd, "mixed sizes")


def test_incomplete_omniglot(tmp_path: Path) -> None:
    root = fake_omniglot(tmp_path, {"images_background/Beta/character01/0001_01.png": png()})
    assert_user_error(cli("data", "check", "omniglot", "--root", str(root)), "1 characters (expected 1623)")
    assert_user_error(cli("data", "prepare", "omniglot", "--root", str(root)), "incomplete")


def test_class_with_too_few_images() -> None:
    cfg = Config(data=DataConfig(dataset="synthetic", n_way=5, k_shot=30, target_per_class=5))
    with pytest.raises(DataError, match=r"fewer than data.k_shot \+ data.target_per_class = 35"):
        make_episodes(cfg, "train")


def test_more_ways_than_classes_in_the_split() -> None:
    cfg = Config(data=DataConfig(dataset="synthetic", n_way=41))
    make_episodes(cfg, "train")  # 240 training classes: fine
    with pytest.raises(DataError, match="val split has only 40 classes; lower data.n_way"):
        make_episodes(cfg, "val")


def test_corrupt_pickle_is_named(tmp_path: Path) -> None:
    folder = write_format(tmp_path / "miniimagenet", "pickle", fixture_images())
    bad = folder / "mini-imagenet-cache-validation.pkl"
    bad.write_bytes(bad.read_bytes()[:100])
    assert_user_error(cli("data", "prepare", "miniimagenet", "--root", str(tmp_path)), str(bad), "truncated")


def test_cache_from_another_source_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # its own cache: the same fixture built by an earlier test has the same key and its source
    monkeypatch.setenv("MAMLPP_CACHE", str(tmp_path / "cache"))
    write_format(tmp_path / "miniimagenet", "pickle", fixture_images())
    assert cli("data", "prepare", "miniimagenet", "--root", str(tmp_path)).exit_code == 0
    [meta_path] = [p for p in cache.cache_root().glob("miniimagenet-*/meta.json")
                   if str(tmp_path) in json.loads(p.read_text())["source"]]
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format": cache.CACHE_FORMAT - 1}))
    for command in ("check", "prepare"):
        result = cli("data", command, "miniimagenet", "--root", str(tmp_path))
        assert_user_error(result, "another source version", "--rebuild")
    assert cli("data", "prepare", "miniimagenet", "--root", str(tmp_path), "--rebuild").exit_code == 0


def test_interrupted_build_leaves_no_trusted_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_format(tmp_path / "miniimagenet", "pickle", fixture_images())
    monkeypatch.setenv("MAMLPP_CACHE", str(tmp_path / "cache"))
    real_save = np.save
    calls = []

    def dying_save(path: Path, array: np.ndarray) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed half-way through writing the splits
        real_save(path, array)

    monkeypatch.setattr(cache.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        load_splits("miniimagenet", tmp_path)
    left = [p.name for p in (tmp_path / "cache").iterdir() if p.name != "keys"]  # keys: hash memo
    assert left == []  # no cache and no half-written temporary folder
    monkeypatch.setattr(cache.np, "save", real_save)
    assert load_splits("miniimagenet", tmp_path)["train"].num_classes == 6


def test_unwritable_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_format(tmp_path / "miniimagenet", "pickle", fixture_images())
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MAMLPP_CACHE", str(tmp_path / "a-file" / "cache"))
    assert_user_error(cli("data", "prepare", "miniimagenet", "--root", str(tmp_path)), "MAMLPP_CACHE")


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    folder = write_format(tmp_path / "miniimagenet", "folders", fixture_images())
    for image in (folder / "val" / "n00000007").iterdir():
        image.unlink()  # an empty class folder, not a ValueError from np.stack
    assert_user_error(
        cli("data", "prepare", "miniimagenet", "--root", str(tmp_path)), "class n00000007", "val split has no images"
    )


def test_pickle_indices_beyond_its_images_are_named(tmp_path: Path) -> None:
    import pickle

    folder = write_format(tmp_path / "miniimagenet", "pickle", fixture_images())
    path = folder / "mini-imagenet-cache-train.pkl"
    data = pickle.loads(path.read_bytes())
    data["class_dict"]["n00000002"] = [4, 5, 6, 999]  # not an IndexError from numpy
    path.write_bytes(pickle.dumps(data))
    assert_user_error(
        cli("data", "prepare", "miniimagenet", "--root", str(tmp_path)), str(path), "class n00000002", "0..23"
    )


@pytest.mark.parametrize(
    ("fmt", "remove", "named"),
    [
        ("folders", "test", "test/ of the folders layout"),
        ("csv", "val.csv", "val.csv of the csv layout"),
        ("pickle", "mini-imagenet-cache-validation.pkl", "mini-imagenet-cache-validation.pkl of the pickle layout"),
    ],
)
def test_a_missing_split_is_named(tmp_path: Path, fmt: str, remove: str, named: str) -> None:
    import shutil

    folder = write_format(tmp_path / "miniimagenet", fmt, fixture_images())
    gone = folder / remove
    shutil.rmtree(gone) if gone.is_dir() else gone.unlink()
    assert_user_error(cli("data", "check", "miniimagenet", "--root", str(tmp_path)), "lacks " + named, "expected images/")


@pytest.mark.parametrize("command", ["check", "prepare"])
def test_a_class_in_two_splits_is_refused(tmp_path: Path, command: str) -> None:
    data = fixture_images()
    data["test"]["n00000001"] = data["train"]["n00000001"]  # a training class among the test classes
    write_format(tmp_path / "miniimagenet", "csv", data)
    assert_user_error(
        cli("data", command, "miniimagenet", "--root", str(tmp_path)),
        "class n00000001 is in both the train and the test split",
    )
