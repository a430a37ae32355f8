"""Engine variants on the CPU: batch-norm kernel x activation layout x engine, one paper shape.

    .venv/bin/python benchmarks/cpu_variants.py [PRESET]     # default omniglot_5way_1shot_mamlpp

Prints seconds per outer iteration (MAML++, 2nd order, MSL on; median of 3 after 1 warm-up) for
each variant, in one process. Run it on an otherwise idle machine: on 2 shared cores the
timings of competing processes are erratic (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import sys
from dataclasses import replace

from mamlpp.bench import time_engine
from mamlpp.kernels import KernelOptions
from mamlpp.presets import get_preset

LAYOUTS = {"contiguous": False, "channels_last": True}


def main() -> None:
    config = get_preset(sys.argv[1] if len(sys.argv) > 1 else "omniglot_5way_1shot_mamlpp").config
    for engine in ("folded", "loop"):
        for kernel in ("fused", "elementwise"):
            for name, channels_last in LAYOUTS.items():
                options = KernelOptions(batch_norm=kernel, channels_last=channels_last)  # type: ignore[arg-type]
                seconds = time_engine(
                    replace(config, engine=engine), "cpu", iterations=3, warmup=1, kernel_options=options
                )
                print(f"{engine:6} bn={kernel:11} layout={name:13} {seconds:.3f} s/iter", flush=True)


if __name__ == "__main__":
    main()
