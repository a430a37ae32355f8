"""Import runs from a W&B project into run directories, so remote runs are analysed like local ones.

``import_wandb("entity/project", runs_dir)`` writes one folder per W&B run under ``runs_dir`` in
the run-directory format (docs/run-directory.md), from the run's config, its full history
(``scan_history``) and its summary:

* ``config.json``: from the W&B config as ``mamlpp.runs.trainer`` sends it (``open_mirror``)
  (``{**Config.to_dict(), "run": {...}}``); the ``{"config", "run"}`` layout of ``config.json``
  and a bare ``Config.to_dict()`` (identity from its ``preset``/``seed``/``scale`` fields and the
  W&B run name) are accepted too.
* ``metrics.jsonl``: one line per epoch from the history rows with an ``epoch`` key and no
  ``iteration`` key, W&B's own ``_step``/``_runtime``/``_timestamp`` keys and media dropped; rows
  of one epoch are merged in step order (the mirror's last step, the learned-lr chart, repeats
  the last epoch with no metric), and an integral float epoch (``3.0``) is written as an integer;
  ``iterations.jsonl``: rows with an ``iteration`` key (when the run logged them; mamlpp's mirror
  does not, so runs imported from W&B give no stability figure).
* ``test.json``: the run's ``test.json`` file when it was saved to W&B, else the summary's
  ``test/<field>`` keys; absent (the run counts as unfinished) when neither exists.

The folder is a cache: ``wandb_run.json`` records the run id and state, and a finished run that
is already cached is not downloaded again. A local run directory of the same name (one without
``wandb_run.json``) is never overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mamlpp.analysis.runs import RunsError

MARKER = "wandb_run.json"


def _plain(value: Any) -> Any:
    """W&B config/summary values -> JSON-serialisable Python values."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _config_doc(wandb_run: Any) -> dict[str, Any]:
    cfg = _plain(dict(wandb_run.config))
    if "config" in cfg and "run" in cfg:
        return {"config": cfg["config"], "run": cfg["run"]}
    config = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "run"}
    if isinstance(
        cfg.get("run"), dict
    ):  # what mamlpp.runs.trainer sends: {**Config.to_dict(), "run": {...}}
        return {"config": config, "run": {"name": wandb_run.name, **cfg["run"]}}
    return {
        "config": config,
        "run": {
            "name": wandb_run.name,
            "preset": config.get("preset", "custom"),
            "overrides": {},
            "seed": config.get("seed", 0),
            "scale": config.get("scale", "custom"),
        },
    }


def _test_doc(wandb_run: Any, folder: Path) -> dict[str, Any] | None:
    try:
        wandb_run.file("test.json").download(root=str(folder), replace=True)
        return json.loads((folder / "test.json").read_text())
    except Exception:  # noqa: BLE001 - any failure means the file was not saved to W&B
        pass
    summary = _plain(dict(wandb_run.summary))
    test = {k.split("/", 1)[1]: v for k, v in summary.items() if k.startswith("test/")}
    return test if "accuracy" in test else None


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def import_run(wandb_run: Any, runs_dir: Path) -> Path | None:
    """Cache one W&B run as a run directory; None when a local run of that name is in the way."""
    doc = _config_doc(wandb_run)
    folder = runs_dir / str(doc["run"].get("name") or wandb_run.name)
    marker = folder / MARKER
    if folder.exists() and not marker.exists():
        return None
    if marker.exists():
        cached = json.loads(marker.read_text())
        if (
            cached.get("id") == wandb_run.id
            and cached.get("state") == "finished"
            and (folder / "test.json").exists()
        ):
            return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(doc, indent=2))
    metrics: dict[Any, dict[str, Any]] = {}
    iterations = []
    for row in wandb_run.scan_history():
        # Scalars only: W&B's own _step/_runtime keys and media such as lslr_table are dropped.
        clean = {
            k: v
            for k, v in row.items()
            if not k.startswith("_")
            and isinstance(v, int | float | str)
            and not isinstance(v, bool)
        }
        if "iteration" in clean:
            iterations.append(clean)
        elif "epoch" in clean:
            epoch = clean["epoch"]
            if isinstance(epoch, float) and epoch.is_integer():
                clean["epoch"] = epoch = int(epoch)
            metrics.setdefault(epoch, {}).update(clean)
    _write_jsonl(folder / "metrics.jsonl", [metrics[e] for e in sorted(metrics)])
    if iterations:
        _write_jsonl(folder / "iterations.jsonl", sorted(iterations, key=lambda r: r["iteration"]))
    test = _test_doc(wandb_run, folder)
    if test is not None:
        (folder / "test.json").write_text(json.dumps(test, indent=2))
    else:
        (folder / "test.json").unlink(missing_ok=True)
    marker.write_text(
        json.dumps({"id": wandb_run.id, "path": "/".join(wandb_run.path), "state": wandb_run.state})
    )
    return folder


def import_wandb(project_path: str, runs_dir: str | Path, api: Any = None) -> list[Path]:
    """Import every run of ``entity/project`` into ``runs_dir``; returns the run folders."""
    if project_path.count("/") != 1 or not all(project_path.split("/")):
        raise RunsError(
            f"--from-wandb needs ENTITY/PROJECT (e.g. my-team/mamlpp), got {project_path!r}"
        )
    if api is None:
        import wandb

        try:
            api = wandb.Api(timeout=60)
        except Exception as e:  # noqa: BLE001 - wandb raises several types for missing credentials
            raise RunsError(
                f"cannot reach W&B ({e}); run `wandb login` or set WANDB_API_KEY"
            ) from e
    try:
        remote = list(api.runs(project_path))
    except Exception as e:  # noqa: BLE001
        raise RunsError(
            f"cannot list the runs of W&B project {project_path!r} ({e}); check the name and `wandb login`"
        ) from e
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    return [folder for r in remote if (folder := import_run(r, runs_dir)) is not None]
