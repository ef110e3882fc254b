"""Comparisons of a cell against the reference cell: variables and arrays, with tolerances.

Tolerances are per dtype and apply as `|x - ref| <= atol + rtol * |ref|` elementwise (numpy's
`allclose` rule, with the reference cell on the right). Why these numbers: see the README.
NaN agrees with NaN at the same place; an infinity must match exactly.
"""

from __future__ import annotations

import numpy as np

from harness.cells import ALL_BACKENDS
from harness.statuses import MISMATCH, PASS, SKIP

#: dtype name -> (rtol, atol). Across backends, kernels differ (oneDNN, Eigen, XLA, ATen),
#: so float32 allows ~8x torch.testing's rtol; half precisions follow torch.testing.
TOLERANCES = {
    "float64": (1e-7, 1e-7),
    "float32": (1e-5, 1e-5),
    "float16": (1e-3, 1e-3),
    "bfloat16": (1.6e-2, 1e-2),
}
EXACT = (0.0, 0.0)  # integers and booleans


def tolerance(dtype: str, rtol: float | None = None, atol: float | None = None) -> tuple[float, float]:
    default = TOLERANCES.get(dtype, EXACT)
    return (default[0] if rtol is None else rtol, default[1] if atol is None else atol)


def compare_variables(reference: list[dict], got: list[dict]) -> dict:
    """The build check: same variable paths, shapes, dtypes and trainable flags."""
    ref = {v["path"]: v for v in reference}
    mine = {v["path"]: v for v in got}
    missing = [p for p in ref if p not in mine]
    extra = [p for p in mine if p not in ref]
    differing = []
    for path in ref.keys() & mine.keys():
        for field in ("shape", "dtype", "trainable"):
            if ref[path][field] != mine[path][field]:
                differing.append(f"{path}: {field} {mine[path][field]} (reference {ref[path][field]})")
    result = {"status": PASS, "variables": len(got)}
    if missing or extra or differing:
        parts = []
        if missing:
            parts.append(f"missing here: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"not in the reference: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
        if differing:
            parts.append("; ".join(sorted(differing)[:5]))
        result.update(status=MISMATCH, missing=missing, extra=extra, differing=sorted(differing),
                      message="variables differ from the reference cell: " + "; ".join(parts))
    return result


OWN_SCALE = " (at the values' own scale)"


def compare_arrays(name: str, ref: np.ndarray, got: np.ndarray, dtype: str,
                   rtol: float | None, atol: float | None, *, own_scale: bool = False) -> dict:
    """Compare one output; returns the error figures and, when off, where the worst one is.

    With `own_scale`, values whose largest magnitude is below `atol` (which would pass whatever
    they are) are compared at their own scale instead: `atol` becomes `rtol` times that largest
    magnitude, and the record says so (`compared_at`)."""
    rtol, atol = tolerance(dtype, rtol, atol)
    base = {"output": name, "dtype": dtype, "rtol": rtol, "atol": atol}
    if ref.shape != got.shape:
        return {**base, "status": MISMATCH,
                "message": f"{name}: shape {got.shape} (reference {ref.shape})"}
    if ref.size == 0:
        return {**base, "status": PASS, "max_abs_err": 0.0, "max_rel_err": 0.0, "frac_mismatched": 0.0}
    ref_f, got_f = ref.astype(np.float64), got.astype(np.float64)
    both_nan = np.isnan(ref_f) & np.isnan(got_f)
    same_inf = np.isinf(ref_f) & (ref_f == got_f)
    if own_scale and atol > 0:
        finite = np.concatenate([ref_f[np.isfinite(ref_f)], got_f[np.isfinite(got_f)]])
        magnitude = float(np.abs(finite).max()) if finite.size else 0.0
        if 0 < magnitude < atol:
            base.update(atol=rtol * magnitude, compared_at=(
                f"the values' own scale: their largest magnitude {magnitude:.3g} is below atol={atol:g}, "
                f"so atol is rtol x {magnitude:.3g}"))
            atol = rtol * magnitude
    with np.errstate(invalid="ignore", over="ignore"):
        abs_err = np.where(both_nan | same_inf, 0.0, np.abs(got_f - ref_f))
        abs_err = np.where(np.isnan(abs_err), np.inf, abs_err)  # NaN on one side only
        rel_err = abs_err / np.maximum(np.abs(ref_f), np.finfo(np.float64).tiny)
        rel_err = np.where(abs_err == 0, 0.0, rel_err)
        off = abs_err > atol + rtol * np.abs(np.where(np.isfinite(ref_f), ref_f, 0.0))
    worst = np.unravel_index(int(np.argmax(abs_err)), abs_err.shape)
    result = {
        **base,
        "status": MISMATCH if off.any() else PASS,
        "max_abs_err": float(abs_err.max()),
        "max_rel_err": float(rel_err.max()),
        "frac_mismatched": float(off.mean()),
    }
    if "compared_at" in base:
        result["max_scaled_err"] = result["max_abs_err"] / magnitude
    if off.any():
        result.update(
            worst_index=[int(i) for i in worst],
            worst_value=float(got_f[worst]),
            worst_reference=float(ref_f[worst]),
            message=(f"{name}: {int(off.sum())} of {off.size} elements "
                     f"({100 * off.mean():.3g}%) beyond rtol={rtol:g}, atol={atol:g}"
                     f"{OWN_SCALE if 'compared_at' in base else ''}; max abs "
                     f"err {result['max_abs_err']:.3g}, max rel err {result['max_rel_err']:.3g}; "
                     f"worst at {tuple(int(i) for i in worst)}: {float(got_f[worst]):.7g} vs "
                     f"reference {float(ref_f[worst]):.7g}"),
        )
    return result


def compare_outputs(names: list[str], reference: list[np.ndarray], got: list[np.ndarray],
                    ref_dtypes: list[str], dtypes: list[str],
                    rtol: float | None, atol: float | None) -> dict:
    """The outputs check over every output leaf; the figures are the worst over leaves."""
    if len(reference) != len(got):
        return {"status": MISMATCH,
                "message": f"{len(got)} outputs here, {len(reference)} in the reference cell"}
    per_output = []
    for name, ref, mine, ref_dtype, dtype in zip(names, reference, got, ref_dtypes, dtypes):
        if ref_dtype != dtype:
            per_output.append({"output": name, "status": MISMATCH,
                               "message": f"{name}: dtype {dtype} (reference {ref_dtype})"})
            continue
        per_output.append(compare_arrays(name, ref, mine, dtype, rtol, atol, own_scale=True))
    result = {"status": PASS}
    for key in ("max_abs_err", "max_rel_err", "frac_mismatched", "max_scaled_err"):
        values = [o[key] for o in per_output if key in o]
        if values:
            result[key] = max(values)
    scaled = [o["compared_at"] if len(per_output) == 1 else f"{o['output']}: {o['compared_at']}"
              for o in per_output if "compared_at" in o]
    if scaled:
        result["compared_at"] = "; ".join(scaled)
    bad = [o for o in per_output if o["status"] != PASS]
    if bad:
        worst = max(bad, key=lambda o: o.get("max_abs_err", np.inf))
        result.update(status=MISMATCH, message="; ".join(o["message"] for o in bad[:3]),
                      **{k: worst[k] for k in ("output", "worst_index", "worst_value",
                                               "worst_reference", "rtol", "atol") if k in worst})
    if len(per_output) > 1:
        result["outputs"] = per_output
    return result


#: False-alarm rate of each two-sample test of laws (distributions). Low, because a parity
#: gate that cries wolf gets switched off; a real difference in law over the thousands of
#: draws a case makes gives p-values far below it (a 30% wider normal over 2000 draws: 1e-30).
LAW_ALPHA = 1e-4
MIN_LAW_SAMPLES = 32


def compare_laws(name: str, reference: np.ndarray, got: np.ndarray) -> dict:
    """Compare the distributions of two samples of random draws: two-sample Kolmogorov-Smirnov
    at a false-alarm rate of LAW_ALPHA, plus the first two moments for the record."""
    from scipy import stats

    reference = np.asarray(reference, np.float64).ravel()
    got = np.asarray(got, np.float64).ravel()
    reference, got = reference[np.isfinite(reference)], got[np.isfinite(got)]
    result = {"output": name, "compared": "distribution", "n": int(got.size),
              "mean": float(got.mean()) if got.size else None,
              "std": float(got.std()) if got.size else None,
              "reference_mean": float(reference.mean()) if reference.size else None,
              "reference_std": float(reference.std()) if reference.size else None}
    if min(reference.size, got.size) < MIN_LAW_SAMPLES:
        return {**result, "status": SKIP, "not_compared": True,
                "reason": f"{name}: {min(reference.size, got.size)} draws, fewer than the {MIN_LAW_SAMPLES} "
                          f"a comparison of laws needs: nothing compared"}
    if np.ptp(reference) == 0 and np.ptp(got) == 0:
        same = reference[0] == got[0]
        return {**result, "status": PASS if same else MISMATCH,
                **({} if same else {"message": f"{name}: constant {got[0]:.7g}, reference {reference[0]:.7g}"})}
    test = stats.ks_2samp(reference, got)
    result.update(ks_statistic=float(test.statistic), ks_pvalue=float(test.pvalue), alpha=LAW_ALPHA)
    if test.pvalue < LAW_ALPHA:
        result.update(status=MISMATCH, message=(
            f"{name}: the law of the draws differs from the reference cell's (KS p={test.pvalue:.2g} "
            f"< {LAW_ALPHA:g}; mean {result['mean']:.4g} vs {result['reference_mean']:.4g}, std "
            f"{result['std']:.4g} vs {result['reference_std']:.4g})"))
    else:
        result["status"] = PASS
    return result


#: What a call's random output is summarised by, one value per call: calls are independent
#: draws, the elements of one call are not (a VAE's 512 outputs come from 8 latent draws).
DRAW_STATISTICS = ("first", "last", "mean", "std", "min", "max")
#: Calls per cell for a comparison of laws: enough for a KS test between 64 and 64 calls to
#: see a 30% wider normal or a shuffle that repeats elements (its spread varies, a
#: permutation's does not).
LAW_CALLS = 64


def draw_statistics(leaf: np.ndarray) -> np.ndarray:
    """One call's output leaf as its DRAW_STATISTICS (NaN and inf left out of the moments)."""
    flat = np.asarray(leaf, np.float64).ravel()
    finite = flat[np.isfinite(flat)]
    if flat.size == 0:
        return np.full(len(DRAW_STATISTICS), np.nan)
    moments = (finite.mean(), finite.std(), finite.min(), finite.max()) if finite.size else (np.nan,) * 4
    return np.array([flat[0], flat[-1], *moments])


def compare_draws(name: str, reference: np.ndarray, got: np.ndarray, alpha: float = LAW_ALPHA) -> dict:
    """Compare the laws of two cells' random outputs from independent calls: `reference` and
    `got` are (calls, DRAW_STATISTICS) arrays. Each statistic's values over the calls are
    compared with a two-sample KS test at alpha / len(DRAW_STATISTICS) (Bonferroni: the
    statistics of one call are not independent of each other), so the whole comparison raises
    a false alarm at most at `alpha`."""
    from scipy import stats

    result = {"output": name, "compared": "distribution", "calls": int(min(len(reference), len(got))),
              "statistics": {}}
    per_test = alpha / len(DRAW_STATISTICS)
    bad = []
    for i, statistic in enumerate(DRAW_STATISTICS):
        ref, mine = reference[:, i], got[:, i]
        ref, mine = ref[np.isfinite(ref)], mine[np.isfinite(mine)]
        if not (ref.size and mine.size):
            continue
        if np.ptp(ref) == 0 and np.ptp(mine) == 0:
            pvalue = 1.0 if ref[0] == mine[0] else 0.0
        else:
            pvalue = float(stats.ks_2samp(ref, mine).pvalue)
        result["statistics"][statistic] = {"ks_pvalue": pvalue, "mean": float(mine.mean()),
                                           "reference_mean": float(ref.mean())}
        if pvalue < per_test:
            bad.append(f"{statistic} {mine.mean():.4g} (reference {ref.mean():.4g}, p={pvalue:.2g})")
    result["alpha"] = alpha
    result["status"] = MISMATCH if bad else PASS
    if bad:
        result["message"] = (f"{name}: over {result['calls']} calls each, the law of the draws differs "
                             f"from the reference cell's (KS, false-alarm rate {alpha:g}): " + "; ".join(bad))
    return result


def compare_weight_sets(reference: dict[str, np.ndarray], got: dict[str, np.ndarray],
                        rtol: float | None, atol: float | None) -> dict:
    """Weights by variable path, each within its dtype's tolerance; the worst figures."""
    per_path = [compare_arrays(path, reference[path], got[path], str(reference[path].dtype), rtol, atol)
                for path in reference if path in got]
    result = {"status": PASS, "variables": len(per_path)}
    for key in ("max_abs_err", "max_rel_err"):
        values = [r[key] for r in per_path if key in r]
        if values:
            result[key] = max(values)
    bad = [r for r in per_path if r["status"] != PASS]
    missing = [p for p in reference if p not in got]
    if bad or missing:
        worst = max(bad, key=lambda r: r.get("max_abs_err", np.inf)) if bad else {}
        messages = [r["message"] for r in bad[:3]] + ([f"missing: {', '.join(missing[:3])}"] if missing else [])
        result.update(status=MISMATCH, message="; ".join(messages),
                      **{f"worst_{k}": worst[k] for k in ("output", "worst_index") if k in worst})
    return result


def leaves_error(reference: list, got: list, rtol: float | None, atol: float | None) -> tuple[float, bool]:
    """The worst absolute error over paired arrays (a layer's tensors), and whether all are within
    tolerance (tiny ones at their own scale, as outputs are) and of the reference's dtypes."""
    if len(reference) != len(got):
        return float("inf"), False
    worst, ok = 0.0, True
    for ref, mine in zip(reference, got):
        ref, mine = np.asarray(ref), np.asarray(mine)
        verdict = compare_arrays("value", ref, mine, str(ref.dtype), rtol, atol, own_scale=True)
        worst = max(worst, verdict.get("max_abs_err", float("inf")))
        ok = ok and verdict["status"] == PASS and ref.dtype == mine.dtype
    return worst, ok


def agree(reference, got, rtol: float | None, atol: float | None) -> bool:
    """Two values (arrays, or lists of arrays) within tolerance of each other."""
    return leaves_error(reference if isinstance(reference, (list, tuple)) else [reference],
                        got if isinstance(got, (list, tuple)) else [got], rtol, atol)[1]


def outlier(values: dict, cell, reference, rtol: float | None, atol: float | None,
            with_reference: frozenset = frozenset()) -> tuple[str | None, list[list[str]]]:
    """Where `cell` and `reference` differ on a value, who departs. The cells are put in groups
    that agree with each other (by their `values`; the cells of `with_reference`, whose value
    is not at hand but whose results matched the reference's, in the reference's group). With
    two groups, the smaller one departs (fewer backends, then fewer cells), named by backend
    where it holds every cell of that backend (`torch`, `tensorflow (the reference)`) and by
    cell otherwise (`jax-cpu-jit`: a compiler); with more groups, or two of one size, no one
    does. Returns the outlier, or None, and the groups as cell ids."""
    def order(c):
        return (c != reference, ALL_BACKENDS.index(c.backend), c.device, c.jit)

    groups: list[list] = []
    for other in sorted(values, key=order):
        for group in groups:
            if agree(values[group[0]], values[other], rtol, atol):
                group.append(other)
                break
        else:
            groups.append([other])
    reference_group = next(g for g in groups if reference in g)
    reference_group.extend(sorted((c for c in with_reference if c not in values), key=order))
    named = [[c.id for c in g] for g in groups]
    cell_group = next(g for g in groups if cell in g)

    def size(group):  # the backends that side with it, then its cells
        return len({c.backend for c in group}), len(group)

    if len(groups) != 2 or cell_group is reference_group or size(cell_group) == size(reference_group):
        return None, named
    departing = min(groups, key=size)
    every = [c for g in groups for c in g]
    parts = []
    for backend in dict.fromkeys(c.backend for c in departing):
        mine = [c for c in departing if c.backend == backend]
        parts += [backend] if len(mine) == len([c for c in every if c.backend == backend]) else [c.id for c in mine]
    return ", ".join(parts) + (" (the reference)" if reference in departing else ""), named
