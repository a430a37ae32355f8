"""`mamlpp data check|prepare DATASET`: see what a data root holds, build the cache."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from mamlpp.data.cache import SPLITS, ImageSets, cache_dir, load_cache
from mamlpp.data.paths import DATA_ENV
from mamlpp.errors import DataError

DATASETS = click.Choice(["omniglot", "miniimagenet"])
ROOT_HELP = f"Data root (holding omniglot/, miniimagenet/) or the dataset's own folder; default ${DATA_ENV}, else ./data."


@click.group("data")
def data() -> None:
    """Check what a data root holds and build the preprocessed cache.

    \b
    Example:
      mamlpp data check omniglot --root /path/to/data
      mamlpp data prepare omniglot --root data --download
    """


def _per_class(counts: list[int]) -> str:
    lo, hi = min(counts), max(counts)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _echo_counts(counts: dict[str, list[int]]) -> None:
    for split in SPLITS:
        c = counts[split]
        click.echo(f"  {split:<5}  {len(c):>5} classes  {_per_class(c):>7} images per class")


def _omniglot_check(root: str | None, decode: bool) -> None:
    from mamlpp.data import omniglot

    sources = omniglot.find_source(root)
    counts = omniglot.count_classes(sources)
    omniglot.check_counts(counts, sources[0].parent)
    split = omniglot.class_split(list(counts))
    click.echo(f"omniglot: {', '.join(str(s) for s in sources)}")
    _echo_counts({s: [counts[c] for c in names] for s, names in split.items()})
    if decode:
        omniglot.build(sources)  # DataError naming the first image that does not decode
    _echo_decoded(decode)
    _echo_cache(cache_dir("omniglot", omniglot.source_key(sources)))


def _echo_decoded(decode: bool) -> None:
    if decode:
        click.echo("images: every image decoded")
    else:
        click.echo("images: counted, not decoded; add --decode to decode every image")


def _miniimagenet_check(root: str | None, decode: bool) -> None:
    from mamlpp.data import miniimagenet

    folder, fmt, counts = miniimagenet.count_classes(root)
    click.echo(f"miniimagenet: {folder} (format: {fmt})")
    for split in SPLITS:
        if not counts[split]:
            raise DataError(f"mini-ImageNet split {split} in {folder} has no classes; {miniimagenet.FIX}")
    _echo_counts({s: list(counts[s].values()) for s in SPLITS})
    if [len(counts[s]) for s in SPLITS] != [64, 16, 20] or {n for c in counts.values() for n in c.values()} != {600}:
        click.echo("  note: the paper's mini-ImageNet has 64/16/20 classes of 600 images each")
    if decode:
        miniimagenet.decode(folder, fmt)
    _echo_decoded(decode)
    _echo_cache(cache_dir("miniimagenet", miniimagenet.source_key(folder, fmt)))


def _echo_cache(folder: Path) -> None:
    """The cache folder and whether it is built; an untrustworthy cache is a DataError."""
    dataset, key = folder.name.split("-", 1)
    built = load_cache(dataset, key) is not None
    state = "built" if built else f"not built; run `mamlpp data prepare {dataset}`"
    click.echo(f"cache: {folder} ({state})")


@data.command()
@click.argument("dataset", type=DATASETS)
@click.option("--root", "--data-root", "root", default=None, help=ROOT_HELP)
@click.option("--decode", is_flag=True, help="Also decode every image (a corrupt file is named).")
def check(dataset: str, root: str | None, decode: bool) -> None:
    """Print classes per split, images per class and the cache location (images decoded only
    with --decode).

    \b
    Example:
      mamlpp data check omniglot --root /path/to/data --decode
    """
    (_omniglot_check if dataset == "omniglot" else _miniimagenet_check)(root, decode)


@data.command()
@click.argument("dataset", type=DATASETS)
@click.option("--root", "--data-root", "root", default=None, help=ROOT_HELP)
@click.option("--download", is_flag=True, help="Omniglot only: fetch the official zips (md5-checked) into ROOT/omniglot first.")
@click.option("--rebuild", is_flag=True, help="Delete an existing cache and build it again.")
def prepare(dataset: str, root: str | None, download: bool, rebuild: bool) -> None:
    """Verify every image and build the preprocessed cache (later runs start in seconds).

    \b
    Example:
      mamlpp data prepare omniglot --root /path/to/data
    """
    sets: ImageSets
    if dataset == "omniglot":
        from mamlpp.data import omniglot

        if download:
            omniglot.download(root)
        sets, folder = omniglot.load(root, rebuild=rebuild)
    else:
        from mamlpp.data import miniimagenet

        if download:
            raise DataError(
                "mini-ImageNet has no official download; fetch it yourself (formats: docs/data.md) "
                "and put it in <data root>/miniimagenet"
            )
        sets, folder = miniimagenet.load(root, rebuild=rebuild)
    click.echo(f"{dataset}: ready (every image was verified when the cache was built)")
    _echo_counts({s: [int(n) for n in np.asarray(sets[s].counts)] for s in SPLITS})
    _echo_cache(folder)
