"""A meta-batch's tasks in two groups computed side by side on CPU threads.

Tasks are independent until their meta-gradients are summed (batch norm's statistics are per
task), so B tasks can run as 2 groups of B/2 tasks, each group still folded into one set of
grouped convolutions, each on its own Python thread with half the intra-op threads (1 each on
the 2-core CPU). There this beats one group spread over 2 intra-op threads: an iteration makes
about 19,500 aten calls, most of them small, and during their dispatch (Python, autograd
bookkeeping, OpenMP fork/join) the second core idles; with two groups the other thread
computes meanwhile (torch's ops release the GIL). Omniglot 5-way 1-shot MAML++: 0.490 -> 0.443
s per iteration, 1.16x; 20-way: 1.08x (`python benchmarks/ab_switch.py task_threads.ENABLED
PRESET ROUNDS`, benchmarks/RESULTS.md).

Only where it was measured faster: on the CPU, for images up to MAX_IMAGE_SIDE pixels. On
CUDA one stream of large kernels is what is wanted. mini-ImageNet keeps one group: glibc gives
each thread its own malloc arena of 64 MiB heaps and maps any bigger block afresh at every
allocation (mamlpp.cpu_memory's settings cannot change that), and an 84x84 task's activations
are such blocks: 0.5-1.8 million page faults per outer iteration. A single arena for all threads
would avoid them but made the groups slower than one group on Omniglot (0.95-0.98x).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

ENABLED = True
"""Switch (benchmarks/ab_switch.py toggles it): False computes every meta-batch as one group."""
MAX_IMAGE_SIDE = 32
"""Omniglot's 28x28 images run in groups, mini-ImageNet's 84x84 do not (see above)."""
MAX_GROUPS = 2
"""Two groups is what was measured (on 2 cores); with more cores each group gets more intra-op
threads rather than more, smaller groups being formed (unmeasured)."""

Result = TypeVar("Result")


def task_groups(tasks: int, image_side: int, device: torch.device) -> list[slice]:
    """Contiguous, near-equal slices of range(tasks); a single slice where groups do not apply
    (off the CPU, images above MAX_IMAGE_SIDE, one intra-op thread, one task, ENABLED False)."""
    threads = torch.get_num_threads()
    small = image_side <= MAX_IMAGE_SIDE
    if not (ENABLED and small) or device.type != "cpu" or threads < 2 or tasks < 2:
        return [slice(0, tasks)]
    count = min(threads, tasks, MAX_GROUPS)
    bounds = [round(i * tasks / count) for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


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
