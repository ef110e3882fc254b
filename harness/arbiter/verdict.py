"""The arbiter's verdicts, in the pytest process (NumPy only): is a value beyond the plain
tolerance what float32 round-off explains, or a divergence?

For one value (an output, or one quantity of one training step), each float32 result's error
against float64 is its RMSE (as `torch._dynamo.utils.same` measures it). The round-off band is
MULTIPLE times the largest error of the round-off samples: the reference cell's own result and the
reference's runs from weights and inputs nudged by one ulp. A cell
- agrees within round-off when it is within the plain tolerance of float64, or within the band,
  or when round-off alone already moves the value by more than ROUNDOFF_DOMINATES of its size
  (a chaotic amplification: no float32 result can be told from another there);
- agrees within round-off, too, where its own backend's runs from nudged weights scatter into the
  band: a departure that round-off decides (BatchNormalization over 2 values, a max-pooling tie)
  lands near float64 in one run and far in another, a backend's flaw lands far in every run;
- diverges otherwise: every run of its backend is beyond the band. Where its own backend's
  float64 run agrees with the reference backend's (within the band), its float32 computation is
  the one that departs ("numerical"); where the two float64 runs differ too, the backends compute
  different things ("semantics").
The reference itself is "far from float64" when every run of its backend is MULTIPLE times farther
than the other backends' cells: then it is the one that departs.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from harness import arrays
from harness.replies import load

#: The band is this multiple of the largest round-off sample's error against float64.
#: torch's checker uses 2, and 3 for tensors under 1000 elements, with the reference's own
#: error as its one sample; here the widest of three samples (the reference and two nudged
#: runs). `make bench` (--only arbiter) measures how often a correct cell (one more nudged run,
#: or a backend against itself with its other kernels) falls outside it.
MULTIPLE = 3.0
#: Where round-off alone (the widest sample) moves a value by this share of its RMS, its
#: float32 results are noise: training amplified round-off chaotically (measured: MobileNetV2's
#: and DenseNet121's batch-2 steps move 1e-2 to 1 relative from their second step on).
ROUNDOFF_DOMINATES = 1e-2

#: Float32 runs from weights and inputs nudged by one ulp, in the reference's backend (with the
#: reference's own result, three samples of what round-off alone does) and in the backend of a
#: cell beyond the band (whether every run of that backend is).
NUDGED_RUNS = 2
#: The reference's nudged runs added where a cell is beyond the band, before it is said to
#: diverge: round-off can land a value in one of two places (BatchNormalization over 2 values,
#: a max-pooling tie), and three samples can all land in the near one by chance (measured:
#: MobileNetV2 at 32x32 under TensorFlow, 11 of 16 nudges land a first-step weight 0.2 to 0.47
#: from float64, 5 land within 0.025, its reference and first two nudges among them).
MORE_NUDGED_RUNS = 4

#: The verdicts: round-off; a divergence; or not judged, where float32's range rather than its
#: round-off decides (the plain verdict stands).
ROUNDOFF, DIVERGES, STANDS = "round-off", "diverges", "the plain verdict stands"


def error(got, truth) -> float:
    """RMSE of `got` against `truth` (NaN against NaN and equal infinities count as 0; a NaN or
    an infinity on one side only, as infinite)."""
    got, truth = np.asarray(got, np.float64), np.asarray(truth, np.float64)
    if got.shape != truth.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        same = (np.isnan(got) & np.isnan(truth)) | (got == truth)
        diff = np.where(same, 0.0, got - truth)
        diff = np.where(np.isfinite(diff), diff, np.inf)
        return float(np.sqrt(np.mean(diff * diff)))


def size_of(truth) -> float:
    truth = np.asarray(truth, np.float64)
    finite = truth[np.isfinite(truth)]
    return float(np.sqrt(np.mean(finite * finite))) if finite.size else 0.0


def within_tolerance(got, truth, rtol: float, atol: float) -> bool:
    got, truth = np.asarray(got, np.float64), np.asarray(truth, np.float64)
    return got.shape == truth.shape and bool(np.allclose(got, truth, rtol=rtol, atol=atol, equal_nan=True))


@dataclasses.dataclass
class Evidence:
    """What the arbiter's runs gave for one check of a case: the float64 results by backend
    (files), whether each stayed float64, the nudged float32 runs, and which float64 is the
    truth (the reference backend's where it held, else TensorFlow's, else any that held)."""

    check: str
    reference: str  # the cell the values were compared with
    float64: dict[str, str]  # backend -> file
    held: dict[str, bool]
    narrowed: dict[str, list[str]]
    errors: dict[str, str]  # backend -> why float64 could not run there
    nudged: dict[str, list[str]]  # cell -> its float32 runs (as that cell runs) from nudged weights and inputs
    seconds: dict[str, float]
    judged: dict = dataclasses.field(default_factory=dict)  # the checks' judgements, cached per cell

    @classmethod
    def empty(cls, check: str, reference: str) -> Evidence:
        return cls(check, reference, {}, {}, {}, {}, {}, {})

    @property
    def reference_backend(self) -> str:
        return self.reference.split("-", 1)[0]

    def add(self, outcomes: dict) -> None:
        """The `arbitrate` jobs' outcomes (`harness.workers.pool.Outcome`), by the cell each ran as; what
        was judged before is judged again with them."""
        self.judged.clear()
        self.__dict__.pop("values", None)
        for cell, outcome in outcomes.items():
            backend = cell.split("-", 1)[0]
            reply = outcome.reply
            if reply is None:
                self.errors[cell] = f"the worker: {outcome.status}: {outcome.message}"[:500]
                continue
            self.seconds.update({f"{cell}_{k}": v for k, v in reply.get("seconds", {}).items()})
            if reply.get("nudged"):
                self.nudged.setdefault(cell, []).extend(reply["nudged"])
            if reply.get("nudged_error"):
                self.errors[f"{cell} nudged"] = reply["nudged_error"]
            if "float64_file" not in reply and not reply.get("float64_error"):
                continue  # nudged runs only
            if reply.get("float64_error"):
                self.errors[backend] = reply["float64_error"]
                continue
            self.float64[backend] = reply["float64_file"]
            self.held[backend] = reply["held"]
            self.narrowed[backend] = reply["narrowed"]

    @property
    def truth_backend(self) -> str | None:
        for backend in [self.reference_backend, "tensorflow", *sorted(self.float64)]:
            if self.held.get(backend) and backend in self.float64:
                return backend
        return None

    @functools.cached_property
    def values(self) -> dict[str, list | dict]:
        """Each file's values: a list of output leaves, or a dict of training quantities."""
        read = (lambda path: load(path)[1]) if self.check == "outputs" else arrays.load_weights
        found = {f"float64:{b}": read(path) for b, path in self.float64.items()}
        found.update({f"nudged:{c}:{i}": read(path) for c, paths in self.nudged.items() for i, path in enumerate(paths)})
        return found

    def truth(self):
        backend = self.truth_backend
        return None if backend is None else self.values[f"float64:{backend}"]

    def own(self, backend: str):
        return self.values.get(f"float64:{backend}") if self.held.get(backend) else None

    def samples(self, cell: str | None = None) -> list:
        """The nudged runs of `cell` (default: the reference's, the round-off band's samples)."""
        cell = cell or self.reference
        return [self.values[f"nudged:{cell}:{i}"] for i in range(len(self.nudged.get(cell, [])))]

    def describe(self) -> dict:
        """The record's account of the runs: which float64 is the truth, which held, the cost."""
        account = {"truth": self.truth_backend, "held": dict(self.held),
                   "nudged_runs": {b: len(paths) for b, paths in self.nudged.items()},
                   "multiple": MULTIPLE, "roundoff_dominates": ROUNDOFF_DOMINATES,
                   "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}
        if any(self.narrowed.values()):
            account["not_float64"] = {b: n for b, n in self.narrowed.items() if n}
        if self.errors:
            account["errors"] = dict(self.errors)
        return account


@dataclasses.dataclass
class Judgement:
    """One value of one cell, against float64."""

    verdict: str  # ROUNDOFF, DIVERGES or STANDS
    error: float  # this cell's RMSE against float64
    reference_error: float
    band: float
    why: str  # within_tolerance, within_band, roundoff_dominated, scatters, float32_range, numerical, semantics,
    # beyond_band
    own_float64_error: float | None = None  # this backend's float64 against the truth
    carried: float = 1.0  # the band widened by the difference this cell carried from the step before

    def to_json(self) -> dict:
        found = {"verdict": self.verdict, "error": self.error, "reference_error": self.reference_error,
                 "band": self.band, "why": self.why}
        if self.own_float64_error is not None:
            found["own_float64_error"] = self.own_float64_error
        if self.carried > 1:
            found["carried"] = self.carried
        return found

    def sentence(self) -> str:
        carried = (f", x{self.carried:.2g} for the distance from float64 this cell carried from the step before"
                   if self.carried > 1 else "")
        figures = (f"RMSE against float64 {self.error:.3g}, the reference's {self.reference_error:.3g}, "
                   f"the round-off band {self.band:.3g}{carried}")
        return {
            "within_tolerance": "within the plain tolerance of float64",
            "within_band": f"within float32 round-off ({figures})",
            "roundoff_dominated": f"round-off alone moves this value by more than {ROUNDOFF_DOMINATES:g} of its size, "
                                  f"so it is not comparable ({figures})",
            "scatters": f"beyond the band, but this backend's own runs from nudged weights land within it: round-off "
                        f"decides where this value lands ({figures})",
            "float32_range": "not judged: the reference's float32 overflows or gives NaN where float64 does not, so "
                             "float32's range, not its round-off, decides here and the plain verdict stands",
            "numerical": f"farther from float64 than round-off explains ({figures}), while this backend's float64 "
                         f"run agrees with the reference backend's: its float32 computation departs",
            "semantics": f"farther from float64 than round-off explains ({figures}), and this backend's float64 run "
                         f"differs too (by {self.own_float64_error or 0:.3g}): the backends compute different things",
            "beyond_band": f"farther from float64 than round-off explains ({figures})",
        }[self.why]


def widest_sample(reference, truth, samples: list) -> float:
    """The largest error against float64 among the round-off samples (the reference and the
    nudged runs)."""
    return max([error(reference, truth)] + [error(s, truth) for s in samples])


def resolution(got, scale: float) -> float:
    """The float32 resolution of values computed from terms of size `scale`: one unit in the
    last place of it, in `got`'s dtype. A value that is zero in exact arithmetic (a bias's
    gradient before a normalization) comes out exactly 0 from one backend's kernels and as
    round-off of this size from another's, and its samples cannot show that."""
    dtype = np.asarray(got).dtype
    return float(np.finfo(dtype).eps * scale) if dtype.kind == "f" else 0.0


def judge_value(got, reference, truth, samples: list, own, rtol: float, atol: float,
                carried: float = 1.0, own_samples: list | None = None, scale: float | None = None) -> Judgement:
    """One float32 value of a cell against the truth, the reference's value and the nudged runs'
    (`own`: this backend's float64 value, or None; `own_samples`: this backend's nudged runs'
    values, or None). `carried`: how many times farther from float64 than the round-off samples
    this cell already was (a training step's starting weights): the band widens by it, as
    training amplifies every difference it starts from alike. `scale`: the size of the terms the
    value is computed from (default: its own), whose float32 resolution is the band's floor."""
    reference_error = error(reference, truth)
    widest = max(widest_sample(reference, truth, samples),
                 resolution(got, size_of(truth) if scale is None else scale))
    carried = max(1.0, carried)
    band = MULTIPLE * widest * carried
    mine = error(got, truth)
    finite = np.isfinite(np.asarray(truth, np.float64))
    if any((finite & ~np.isfinite(np.asarray(run, np.float64))).any() for run in [reference, *samples]):
        # float32 overflows (or gives NaN) where float64 does not: its range, not its round-off,
        # decides there (exp(100) is inf in float32), and float64 cannot arbitrate
        return Judgement(STANDS, mine, reference_error, band, "float32_range", carried=carried)
    if within_tolerance(got, truth, rtol, atol):
        return Judgement(ROUNDOFF, mine, reference_error, band, "within_tolerance", carried=carried)
    if mine <= band:
        return Judgement(ROUNDOFF, mine, reference_error, band, "within_band", carried=carried)
    # A NaN or infinity where float64 and every round-off sample are finite is never round-off.
    finite_elsewhere = np.isfinite(np.asarray(truth, np.float64)) & np.isfinite(np.asarray(reference, np.float64))
    for sample in samples:
        finite_elsewhere &= np.isfinite(np.asarray(sample, np.float64))
    if widest > ROUNDOFF_DOMINATES * size_of(truth) and np.isfinite(np.asarray(got, np.float64))[finite_elsewhere].all():
        return Judgement(ROUNDOFF, mine, reference_error, band, "roundoff_dominated", carried=carried)
    if own_samples and min(error(s, truth) for s in own_samples) <= band:
        return Judgement(ROUNDOFF, mine, reference_error, band, "scatters", carried=carried)
    if own is None:
        return Judgement(DIVERGES, mine, reference_error, band, "beyond_band", carried=carried)
    apart = error(own, truth)
    same_function = apart <= band or within_tolerance(own, truth, rtol, atol)
    return Judgement(DIVERGES, mine, reference_error, band, "numerical" if same_function else "semantics", apart,
                     carried)


def distance_ratio(got: dict, reference: dict, truth: dict, samples: list[dict], keys: list[str]) -> float:
    """How many times farther from float64 than the round-off samples `got` is, at its worst over
    `keys` (values the samples put exactly on float64 left out), capped at MULTIPLE: beyond it
    a value was judged a divergence already."""
    worst = 0.0
    for key in keys:
        widest = widest_sample(reference[key], truth[key], [s[key] for s in samples if key in s])
        if widest > 0 and np.isfinite(widest):
            worst = max(worst, error(got[key], truth[key]) / widest)
    return min(MULTIPLE, worst)


def reference_far(reference_errors: list[float], others: list[float], rtol: float, atol: float, truth) -> bool:
    """The reference is the one far from float64: each of its backend's results (the reference's
    and its nudged runs') MULTIPLE times farther than the other backends' cells, and beyond the
    plain tolerance's scale. A numerical flaw of that backend is in every run of it; where round-off
    is amplified chaotically, one run lands far and another near."""
    finite = [e for e in others if np.isfinite(e)]
    if not finite or not all(np.isfinite(reference_errors)):
        return False
    floor = atol + rtol * size_of(truth)
    nearest = min(reference_errors)
    return nearest > MULTIPLE * max(finite) and nearest > floor
