"""`mamlpp sweep run --executor slurm`: the grid's missing runs as SLURM jobs, through submitit.

One job per run; each job runs the same ``mamlpp train`` command line the local runner would, so
the results land in the same run directories, and a job that is killed (time limit, preemption)
leaves a run that resumes when the same ``sweep run`` command is given again. Finished runs
(``test.json``) are never resubmitted. Each submitted job's id is kept in
``<runs-dir>/.submitit/<run name>.job``; while that job is still queued or running (``squeue``
lists it), a second invocation does not submit the run again. The command waits for its jobs
and reports each as it ends; interrupting it leaves the jobs running on the cluster.

submitit (https://github.com/facebookincubator/submitit) writes the sbatch script, keeps job
logs in ``<runs-dir>/.submitit/<job id>/`` and detects SLURM. ``$MAMLPP_SUBMITIT_CLUSTER=local``
uses its local executor instead (each job a subprocess of this machine), for tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from mamlpp.errors import MamlppError

CLUSTER_ENV = "MAMLPP_SUBMITIT_CLUSTER"
FOLDER_NAME = ".submitit"


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 1440
    gpus: int = 1
    cpus: int = 4


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise MamlppError(
            "--executor slurm needs submitit: pip install 'mamlpp[slurm]' (or pip install "
            "submitit) in this environment, or use --executor local"
        ) from None
    return submitit


def _still_queued(marker: Path) -> str | None:
    """The job id in ``marker`` when SLURM still lists that job (queued or running), else None."""
    if not marker.is_file() or shutil.which("squeue") is None:
        return None
    job_id = marker.read_text().strip()
    try:
        listed = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return job_id if listed.returncode == 0 and listed.stdout.strip() else None


def submit_runs(
    runs_dir: Path, launches: list[tuple[str, list[str]]], options: SlurmOptions
) -> list[str]:
    """Submit one job per (run name, command), wait for them; returns the names that failed."""
    submitit = _submitit()
    folder = runs_dir / FOLDER_NAME
    cluster = os.environ.get(CLUSTER_ENV) or "slurm"
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    except RuntimeError as e:
        raise MamlppError(
            f"--executor slurm: {e} (is this a SLURM login node?); use --executor local here"
        ) from None
    params: dict[str, Any] = {
        "timeout_min": int(options.time_min),
        "gpus_per_node": int(options.gpus),
        "cpus_per_task": int(options.cpus),
        "tasks_per_node": 1,
        "nodes": 1,
    }
    if options.partition:
        params["slurm_partition"] = options.partition
    jobs = []
    for name, command in launches:
        marker = folder / f"{name}.job"
        queued = _still_queued(marker)
        if queued:
            click.echo(f"{name}: job {queued} is still queued or running; not submitted again")
            continue
        executor.update_parameters(name=f"mamlpp-{name}"[:120], **params)
        job = executor.submit(submitit.helpers.CommandFunction(command, verbose=True))
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{job.job_id}\n")
        click.echo(f"submitted {name} as job {job.job_id} ({cluster})")
        jobs.append((name, job))
    if not jobs:
        return []
    click.echo(
        f"Waiting for {len(jobs)} job(s); logs in {folder}/<job id>/. Ctrl-C leaves them running; "
        "the same command later submits only what is still missing."
    )
    failed = []
    by_job = {id(job): name for name, job in jobs}
    try:
        for job in submitit.helpers.as_completed([j for _, j in jobs], poll_frequency=2):
            name = by_job[id(job)]
            error = job.exception()
            click.echo(f"job {job.job_id} {'failed' if error else 'done'}: {name}")
            if error:
                failed.append(name)
    except KeyboardInterrupt:
        raise MamlppError(
            f"stopped waiting; the jobs keep running (squeue -u $USER, logs in {folder}); run the "
            "same command again to submit what is still missing"
        ) from None
    return failed
