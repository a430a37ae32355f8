"""A meta-batch's tasks in two groups computed side by side on CPU threads.

Tasks are independent until their meta-gradients are summed (batch norm's statistics are per
task), so B tasks can run as 2 groups of B/2 tasks, each group still folded into one set of
grouped convolutions, each on its own Python thread with a share of the intra-op threads (1
each on 2 cores). An iteration is thousands of small aten calls; while one thread dispatches
(Python, autograd bookkeeping, OpenMP fork/join) the other computes (torch's ops release the
GIL), which one group spread over all intra-op threads cannot do. Results are combined in group
order, so runs stay deterministic.

The rule: groups on the CPU only, and only while a group's largest activation stays below 48 MiB
(`ARENA_BLOCK_LIMIT`), under the 64 MiB heaps of glibc's per-thread malloc arenas: glibc maps a
bigger block afresh at every allocation, whatever `mamlpp.kernels.cpu_memory` sets, so larger
groups page-fault on every iteration (Omniglot 20-way 5-shot and mini-ImageNet run as one
group). One arena shared by all threads avoids the faults but loses the groups' gain. On CUDA
one stream of large kernels is what is wanted. Evidence (speed-ups, page faults, the shared
arena): benchmarks/RESULTS.md#cpu; the A/B: `python benchmarks/ab_switch.py task_threads PRESET
ROUNDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from mamlpp.data.batch import TaskBatch

ARENA_BLOCK_LIMIT = 48 << 20
"""Bytes: a group runs on a thread only if its largest activation stays below this, under the
64 MiB heaps of glibc's thread arenas (see above)."""
MAX_GROUPS = 2
"""Two groups is what was measured (on 2 cores); with more cores each group gets more intra-op
threads rather than more, smaller groups being formed (unmeasured)."""

Result = TypeVar("Result")


def task_groups(tasks: int, activation_bytes_per_task: int, device: torch.device) -> list[slice]:
    """Contiguous, near-equal slices of range(tasks); a single slice where groups do not apply:
    off the CPU, one intra-op thread, one task, or a group's largest activation (its tasks x
    `activation_bytes_per_task`) above ARENA_BLOCK_LIMIT."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or tasks < 2:
        return [slice(0, tasks)]
    count = min(threads, tasks, MAX_GROUPS)
    if -(-tasks // count) * activation_bytes_per_task > ARENA_BLOCK_LIMIT:
        return [slice(0, tasks)]
    bounds = [round(i * tasks / count) for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def task_groups_for(
    batch: TaskBatch, filters: int, dtype: torch.dtype, device: torch.device
) -> list[slice]:
    """`task_groups` for a meta-batch of a network with `filters` first-layer filters: a task's
    largest activation is the first layer's output before pooling, [images, filters, H, W] for
    its support or its target set."""
    images = max(batch.support_x.shape[1], batch.target_x.shape[1])
    height, width = batch.support_x.shape[-2:]
    per_task = images * filters * height * width * dtype.itemsize
    return task_groups(batch.num_tasks, per_task, device)


def map_on_threads(work: Callable[[slice], Result], groups: list[slice]) -> list[Result]:
    """[work(g) for g in groups], one thread per group, with the intra-op threads shared out
    among them (restored afterwards). Results come back in the groups' order, so whatever the
    caller sums over them is summed in a fixed order (runs stay deterministic). An exception
    in a group is raised here."""
    if len(groups) == 1:
        return [work(groups[0])]
    threads, grad_mode = torch.get_num_threads(), torch.is_grad_enabled()

    def run(group: slice) -> Result:
        with torch.set_grad_enabled(grad_mode):  # grad mode is per thread; keep the caller's
            return work(group)

    # A fresh pool each call: torch gives a new thread the intra-op count current at its first
    # parallel op, so threads kept from an earlier call could hold a stale count.
    torch.set_num_threads(max(threads // len(groups), 1))
    try:
        with ThreadPoolExecutor(len(groups), thread_name_prefix="mamlpp-tasks") as pool:
            return list(pool.map(run, groups))
    finally:
        torch.set_num_threads(threads)
