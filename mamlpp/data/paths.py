"""Where data and caches live: the data root (one folder per dataset) and the cache folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mamlpp.errors import DataError

DATA_ENV = "MAMLPP_DATA"
CACHE_ENV = "MAMLPP_CACHE"


def resolve_data_root(root: str | Path | None) -> Path:
    """The data root: `root` (from --data-root) if given, else $MAMLPP_DATA, else ./data."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path("data")


def cache_root() -> Path:
    """Folder for preprocessed caches: $MAMLPP_CACHE, else ~/.cache/mamlpp (never the data root,
    which may be read-only)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mamlpp"


def dataset_dir(
    root: str | Path | None, name: str, looks_like_dataset: Callable[[Path], bool]
) -> Path:
    """The dataset's own folder: `<root>/<name>`, or `root` itself when it already is that folder
    (when `looks_like_dataset(root)` says it holds the dataset's files)."""
    base = resolve_data_root(root)
    download = " (or run `mamlpp data prepare omniglot --download`)" if name == "omniglot" else ""
    if not base.exists():
        raise DataError(
            f"data root {base} does not exist; pass --data-root PATH or set {DATA_ENV} to the "
            f"folder that holds {name}/{download}"
        )
    if not base.is_dir():
        raise DataError(f"data root {base} is not a folder; pass the folder that holds {name}/")
    if (base / name).is_dir():
        return base / name
    if looks_like_dataset(base):
        return base
    raise DataError(
        f"no {name}/ folder in data root {base}; put the dataset in {base / name} "
        f"or point --data-root / {DATA_ENV} at the folder that holds {name}/{download}"
    )
