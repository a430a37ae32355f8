"""`mamlpp data check|prepare` on the real Omniglot; the download path without the network."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mamlpp.cli import main
from mamlpp.data import omniglot


def test_check_reports_splits_counts_and_cache(shared_data_root: Path) -> None:
    result = CliRunner().invoke(main, ["data", "check", "omniglot", "--root", str(shared_data_root)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("train" in ln and "1150 classes" in ln and "20 images per class" in ln for ln in lines)
    assert any("val" in ln and "50 classes" in ln for ln in lines)
    assert any("test" in ln and "423 classes" in ln for ln in lines)
    assert lines[-1].startswith("cache: ")


def test_prepare_does_not_download_what_is_there(shared_data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", no_network)
    args = ["data", "prepare", "omniglot", "--root", str(shared_data_root), "--download"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "ready" in result.output and "423 classes" in result.output


def test_download_fetches_the_official_zips_with_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(
        "torchvision.datasets.utils.download_url",
        lambda url, root, filename, md5: calls.append((url, Path(root), filename, md5)),
    )
    omniglot.download(tmp_path)
    base = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
    assert calls == [
        (f"{base}/images_background.zip", tmp_path / "omniglot", "images_background.zip", "68d2efa1b9178cc56df9314c21c6e718"),
        (f"{base}/images_evaluation.zip", tmp_path / "omniglot", "images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811"),
    ]


def test_miniimagenet_has_no_download(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["data", "prepare", "miniimagenet", "--root", str(tmp_path), "--download"])
    assert result.exit_code == 2 and "no official download" in result.stderr



def test_a_root_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    for root in (tmp_path / "a-file", tmp_path / "a-file" / "data"):
        args = ["data", "prepare", "omniglot", "--root", str(root), "--download"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"error: cannot create {root / 'omniglot'} (")
        assert "pass a writable --root" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    "failure",
    [
        OSError("<urlopen error [Errno -2] Name or service not known>"),
        RuntimeError("File not found or corrupted."),
    ],
)
def test_a_failed_download_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fail)
    args = ["data", "prepare", "omniglot", "--root", str(tmp_path), "--download"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot download https://") and str(failure) in line, line
    assert f"put the official zips in {tmp_path / 'omniglot'} yourself" in line
