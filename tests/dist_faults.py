"""``python tests/dist_faults.py ARGS`` = ``python -m hinas ARGS`` with one fault injected on one rank, for torchrun tests.

``HINAS_TEST_FAULT=nan:RANK:CALL[:TIMES]`` makes the CALL-th loss (1-based, counted in this process) on rank RANK NaN,
and the TIMES - 1 after it (2: the step and its recomputation, a fault that persists);
``HINAS_TEST_FAULT=signal:RANK:STEP`` sends SIGTERM to rank RANK alone right after its STEP-th training step.
The faults are patched in here, from outside, so the package carries no test hooks.
"""

import os
import signal
import sys

from hinas.cli import main
from hinas.engine import loop


def _inject(kind: str, rank: int, count: int, times: int = 1) -> None:
    if int(os.environ.get("RANK", "0")) != rank:
        return
    calls = 0
    if kind == "nan":
        original = loop.Job.loss

        def loss(self, *args, **kwargs):
            nonlocal calls
            calls += 1
            value = original(self, *args, **kwargs)
            return value * float("nan") if count <= calls < count + times else value

        loop.Job.loss = loss
    else:
        original_fit_phase = loop._phase

        def phase(job, state, stop, ctx):
            step = type(job).step

            def counted(self, st, batch):
                nonlocal calls
                step(self, st, batch)
                calls += 1
                if calls == count:
                    os.kill(os.getpid(), signal.SIGTERM)

            job.step = counted.__get__(job)
            return original_fit_phase(job, state, stop, ctx)

        loop._phase = phase


if __name__ == "__main__":
    kind, rank, *counts = os.environ["HINAS_TEST_FAULT"].split(":")
    _inject(kind, int(rank), *map(int, counts))
    sys.exit(main(sys.argv[1:]))
