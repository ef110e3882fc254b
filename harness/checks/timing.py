"""`timing`: the first call (compile included) and steady-state medians of inference and of a
train step, with the device synchronised. Its figures are taken while `outputs` and `train`
run their calls; a cell's `timings` keep them."""

from __future__ import annotations

import statistics
import time

from harness.calls import synchronize
from harness.statuses import PASS

STEADY_REPEATS = 5


def measure_predict(ctx, predict) -> None:
    """Steady-state inference after the first calls: median, min and max of STEADY_REPEATS."""
    if "timing" not in ctx.wanted:
        return
    steady = []
    for _ in range(STEADY_REPEATS):
        t0 = time.perf_counter()
        predict()
        synchronize(ctx.backend, ctx.device)
        steady.append(time.perf_counter() - t0)
    ctx.timings.update(predict_median_s=statistics.median(steady), predict_min_s=min(steady),
                       predict_max_s=max(steady))
    ctx.checks["timing"] = {"status": PASS}


def record_train(ctx, times: list[float]) -> None:
    """The first train step (compile included), and the median, min and max of the others."""
    ctx.timings["train_first_s"] = times[0]
    ctx.timings.update(train_median_s=statistics.median(times[1:]), train_min_s=min(times[1:]),
                       train_max_s=max(times[1:]))
