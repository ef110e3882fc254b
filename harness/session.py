"""Runs a case across its cells: the phases, the jobs sent to workers, and the files between them.

When a case's first item runs, the case's selected cells are run at once, in phases:
1. the reference cell (its initial weights are what every other cell loads);
2. every other cell side by side, one queue per worker;
3. the cross-cell checks: each backend loads the `.keras` files saved under the others, and a
   TensorFlow worker reloads every backend's SavedModel export through `TFSMLayer`;
`harness.judge` then turns the replies into one record per cell;
4. where values failed the plain tolerance, the float64 arbiter's runs (`harness.arbiter`), and
   the records judged again with them;
5. where a model's outputs or a training step's loss still diverge, the localization
   (`harness.localize`).
Later items of the case only read their record.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile

from harness import arrays
from harness.report import values
from harness.arbiter.verdict import DIVERGES, MORE_NUDGED_RUNS, NUDGED_RUNS, Evidence
from harness.localize import judge as localize
from harness.case import ALL_CHECKS, Case
from harness.cells import KERAS2, Cell, CellPlan, case_plan, installed_backends
from harness.checks import version
from harness.judge import Judge
from harness.replies import CaseReplies, fallback_order
from harness.workers.pool import Job, Outcome, WorkerPool
from harness.statuses import PASS, TIMEOUT

#: Checks that depend on the file, not on jit: they run once per (backend, device).
ONCE_PER_WORKER = ("save", "export")
EXPORT_RELOADER = ("tensorflow", "cpu")


@dataclasses.dataclass(frozen=True)
class CaseRef:
    """Where a worker finds a case: the module as pytest imported it, and the attribute."""

    id: str
    module: str
    file: str
    attr: str
    import_root: str | None
    param: str | None = None  # the case's `params` entry, for a case made from a zoo

    @classmethod
    def from_module(cls, case_id: str, module, attr: str, param: str | None = None) -> CaseRef:
        file = os.path.abspath(module.__file__)
        parts = module.__name__.split(".")
        root = file
        for _ in range(len(parts)):
            root = os.path.dirname(root)
        expected = [os.path.join(root, *parts) + ".py", os.path.join(root, *parts, "__init__.py")]
        importable = file in expected and sys.modules.get(module.__name__) is module
        return cls(case_id, module.__name__, file, attr, root if importable else None, param)


def file_cells(cells: list[Cell]) -> dict[tuple[str, str], Cell]:
    """The cell of each (backend, device) that saves and exports: nojit where it runs."""
    chosen: dict[tuple[str, str], Cell] = {}
    for cell in sorted(cells, key=lambda c: c.jit):
        chosen.setdefault(cell.worker_key, cell)
    return chosen


class ParitySession:
    """Owns the worker pool and the records of every case run in this pytest process."""

    def __init__(self, plan: CellPlan, timeout: float, log_dir: str,
                 checks: tuple[str, ...] = ALL_CHECKS, compile_cache_dir: str | None = None,
                 report_dir: str | None = None, baseline_dir: str | None = None):
        self.plan = plan
        self.baseline_dir = baseline_dir  # an earlier report folder whose values/ each cell is compared with
        self.report_dir = report_dir  # where reproducers of localized divergences go (None: none)
        self.checks = checks  # --keras-checks: the run's subset
        self.timeout = timeout
        self.pool = WorkerPool(log_dir, compile_cache_dir, plan.envs)
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.work_dir = tempfile.mkdtemp(prefix="keras-parity-", dir=shm)
        self.records: dict[tuple[str, str], dict] = {}
        self._case_counter = 0

    def record(self, case: Case, case_ref: CaseRef, cell: Cell, selected: set[Cell]) -> dict:
        if (case_ref.id, cell.id) not in self.records:
            self.run_case(case, case_ref, sorted(selected | {cell}))
        return self.records[(case_ref.id, cell.id)]

    def close(self) -> None:
        self.pool.shutdown()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def run_case(self, case: Case, case_ref: CaseRef, cells: list[Cell]) -> None:
        self._case_counter += 1
        case_dir = os.path.join(self.work_dir, f"case{self._case_counter}")
        os.makedirs(case_dir)
        wanted = [c for c in case.wanted_checks() if c in self.checks]
        # The main environment first: its reference writes the initial weights every cell of
        # every environment loads.
        plans = {env: (case_plan(self.plan, case) if env == "" else self.plan).for_env(env)
                 for env in ["", *self.plan.envs] if env == "" or any(c.env == env for c in cells)}
        envs = [EnvironmentRun(env, plan, Judge(case, case_ref, plan, self.pool, wanted), case_dir)
                for env, plan in plans.items()]
        for run in envs:
            for cell in cells:
                reason = cell.env == run.env and (self.plan.skip_reason(cell) or case.skip_reason(cell.id))
                if reason:
                    run.skipped[cell] = reason
                    self.records[(case_ref.id, cell.id)] = run.judge.skip_record(cell, reason)
            run.runnable = [run.plan.reference] + [c for c in cells if c.env == run.env and c != run.plan.reference
                                                   and c not in run.skipped]
            run.replies = CaseReplies(file_cells(run.runnable))

        seed = case.seed(case_ref.id)
        inputs_path = os.path.join(case_dir, "inputs.npz")
        targets_path = sample_weight_path = None
        baseline = self.baseline_dir and values.case_folder(self.baseline_dir, case_ref.id)
        try:
            arrays.save_tree(inputs_path, case.make_inputs(seed))
            targets = case.make_targets(seed)
            if targets is not None:
                targets_path = os.path.join(case_dir, "targets.npz")
                arrays.save_tree(targets_path, targets)
            sample_weight = case.make_sample_weight(seed)
            if sample_weight is not None:
                sample_weight_path = os.path.join(case_dir, "sample_weight.npz")
                arrays.save_tree(sample_weight_path, sample_weight)
            # Against a baseline's values: its inputs and initial weights, where it kept them whole.
            for path in (inputs_path, targets_path, sample_weight_path, envs[0].weights_path):
                kept = baseline and path and values.start_file(baseline, os.path.basename(path))
                if kept:
                    shutil.copyfile(kept, path)
            envs[0].weights_given = os.path.exists(envs[0].weights_path)
        except Exception as exc:  # noqa: BLE001 - the user's inputs callable is user code
            for run in envs:
                for cell in run.runnable:
                    self.records[(case_ref.id, cell.id)] = run.judge.input_error_record(cell, exc)
            return

        common = {"case": dataclasses.asdict(case_ref), "inputs": inputs_path, "seed": seed}
        data = {"targets": targets_path, "sample_weight": sample_weight_path}
        for run in envs:
            if run.env and os.path.exists(envs[0].weights_path):
                shutil.copyfile(envs[0].weights_path, run.weights_path)  # the main environment's
                run.weights_given = True
            self.run_cells(case, run, wanted, {**common, **data})
        self.run_cross_checks(envs, common)

        main = envs[0]
        for run in envs:
            records = {cell: run.judge.cell_record(cell, run.replies) for cell in run.runnable}
            arbiter_common = {**common, "weights": run.weights_path, "sample_weight": sample_weight_path}
            if run.judge.to_arbitrate:  # values beyond the plain tolerance: judged again against float64
                records = self.arbitrate(run.judge, run.replies, arbiter_common, run.folder, run.runnable)
            self.localize(case, case_ref, run.judge, records, run.replies, {**common, "weights": run.weights_path},
                          run.folder)
            run.records = records
            if run.env and "version" in self.checks:
                self.compare_versions(case, case_ref, run, main, common)
            for cell, record in run.records.items():
                self.records[(case_ref.id, cell.id)] = record
        if self.report_dir:
            self.keep_values(case, case_ref, envs, case_dir, baseline)

    def keep_values(self, case: Case, case_ref: CaseRef, envs: list[EnvironmentRun], case_dir: str,
                    baseline: str | None) -> None:
        """The values this case compared, into the report folder; against a baseline's, each
        cell's record gets `baseline_values` (what moved, with its figures)."""
        folder = values.case_folder(self.report_dir, case_ref.id)
        values.keep_start(case_dir, folder)
        for run in envs:
            for cell, record in run.records.items():
                outputs = run.replies.check(cell, "outputs")
                files = {"outputs": None if outputs.get("random") else outputs.get("file"),
                         "train": run.replies.check(cell, "train").get("file")}
                files = {check: path for check, path in files.items() if path}
                values.keep_cell(folder, cell.id, files)
                if baseline and os.path.isdir(baseline):
                    found = values.compare_cell(baseline, cell.id, files, case.rtol, case.atol)
                    if not envs[0].weights_given and os.path.exists(envs[0].weights_path):
                        found["not_compared"].append("the baseline kept no initial weights to start from (over "
                                                     "the size limit, or none): values compared from this run's own")
                    record["baseline_values"] = found
                elif baseline:
                    record["baseline_values"] = {"compared": [], "moved": [],
                                                 "not_compared": ["the baseline has no values of this case"]}

    def run_cells(self, case: Case, run: EnvironmentRun, wanted: list[str], common: dict) -> None:
        """Phases 1 and 2 in one environment: the reference (it writes the initial weights, in the
        main environment), then every other cell side by side."""
        replies = run.replies

        def job(cell: Cell, writes_weights: bool = False) -> Job:
            out_dir = os.path.join(run.folder, cell.id)
            os.makedirs(out_dir)
            request = {
                **common,
                "type": "run_cell",
                "cell": cell.id,
                "checks": [c for c in wanted if case.runs_in(c, cell.id)
                           and (c not in ONCE_PER_WORKER or replies.file_cells[cell.worker_key] == cell)],
                "out_dir": out_dir,
                "save_weights_to": run.weights_path if writes_weights else None,
                # Without any cell's weights (every candidate failed first), a cell keeps its
                # own; its comparisons are then skipped, not failed.
                "load_weights_from": run.weights_path if not writes_weights and os.path.exists(run.weights_path)
                else None,
                "keras2": keras2_files(replies, cell),
            }
            return Job(cell.worker_key, request, self.timeout,
                       lambda outcome: replies.outcomes.__setitem__(cell, outcome))

        # Start every worker the case needs now, so their backends import side by side
        # while the reference cell runs.
        for cell in run.runnable[1:]:
            if cell.worker_key not in self.pool.unavailable:
                self.pool.start(cell.worker_key)
        rest = [c for c in fallback_order(run.plan) if c in run.runnable]
        if not run.weights_given:
            # The reference writes the initial weights every other cell loads. Where it fails
            # before it gets there, the next cell that runs writes them instead (the fallback
            # reference, named in the records), so the cells that work are still compared.
            while rest:
                writer = rest.pop(0)
                self.pool.run([job(writer, writes_weights=True)])
                if os.path.exists(run.weights_path) or replies.check(writer, "outputs").get("status") == PASS:
                    replies.weights_from = writer
                    break
                if replies.outcomes[writer].status == TIMEOUT:
                    break  # a model that hangs in one cell would hang the others one after another
        self.pool.run([job(cell) for cell in rest])

    def compare_versions(self, case: Case, case_ref: CaseRef, run: EnvironmentRun, main: EnvironmentRun,
                         common: dict) -> None:
        """The `version` check of each of this environment's cells against the main
        environment's same cell; outputs that moved are localized with the main cell as the
        reference, to the first layer whose output moved."""
        for cell, record in run.records.items():
            main_cell = cell.in_env("")
            version.judge(case, cell, record, run.replies, main_cell, main.replies, main.records.get(main_cell),
                          run.weights_given)
        moved = [cell for cell, record in run.records.items()
                 if record["checks"][version.NAME].get("first_moved", {}).get("check") == "outputs"
                 and run.replies.check(cell, "outputs").get("kind") in ("model", "layer")]
        for cell in moved:
            self.localize_group(case, case_ref, version.NAME, (), cell.in_env(""), [cell], run.records,
                                {**common, "weights": main.weights_path},
                                os.path.join(run.folder, f"localize-version-{cell.id}"), reproducers=False)
        for cell, record in run.records.items():
            run.judge.finish(cell, record)

    def arbitrate(self, judge: Judge, replies: CaseReplies, common: dict, case_dir: str,
                  cells: list[Cell]) -> dict[Cell, dict]:
        """Phase 4, for the checks whose values failed the plain tolerance in some cell: the
        case's computation in float64 (`harness.arbiter`) in the backend of the cell they were
        compared with, with that cell's float32 runs from nudged weights and inputs (its round-off
        band); in TensorFlow's where that float64 did not hold end to end; then, for the cells
        that still diverge, in their own backends (float64, which tells a backend that computes
        something else from one whose float32 computation departs, and each such cell's nudged
        runs, which tell a backend's flaw from round-off that decides where a value lands).
        Returns the records judged with them."""
        ran = {c.backend: c for c in sorted(cells, key=lambda c: (c.jit, c.device))}

        def run(check: str, reference: Cell, asked: dict[Cell, tuple[bool, int]]) -> None:
            """Jobs as each cell of `asked` runs: float64 or not, and how many more nudged float32 runs."""
            folder = os.path.join(case_dir, f"arbiter-{check}")
            request = {**common, "type": "arbitrate", "check": check,
                       "targets": replies.check(reference, "train").get("targets_file") if check == "train" else None}
            outcomes: dict[str, Outcome] = {}
            jobs = []
            for cell, (float64, nudged) in asked.items():
                out_dir = os.path.join(folder, cell.id)
                os.makedirs(out_dir, exist_ok=True)
                done = len(replies.arbiter[check].nudged.get(cell.id, [])) if check in replies.arbiter else 0
                jobs.append(Job(cell.worker_key, {**request, "cell": cell.id, "out_dir": out_dir, "float64": float64,
                                                  "nudged": nudged, "nudged_from": done},
                                self.timeout, lambda outcome, cell=cell: outcomes.__setitem__(cell.id, outcome)))
            self.pool.run(jobs)
            replies.arbiter.setdefault(check, Evidence.empty(check, reference.id)).add(outcomes)

        references = {check: judge.reference_for(check, replies) for check in judge.to_arbitrate}
        references = {check: ref for check, ref in references.items() if ref is not None}
        for check, reference in references.items():
            run(check, reference, {reference: (True, NUDGED_RUNS)})
            if not replies.arbiter[check].held.get(reference.backend) and reference.backend != "tensorflow" \
                    and "tensorflow" in ran:
                run(check, reference, {ran["tensorflow"]: (True, 0)})
        records = {cell: judge.cell_record(cell, replies) for cell in cells}
        again = False
        for check, reference in references.items():
            evidence = replies.arbiter[check]
            diverging = [cell for cell, record in records.items() if cell.id not in evidence.nudged
                         and record["checks"].get(check, {}).get("float64", {}).get("verdict") == DIVERGES]
            if diverging and evidence.truth_backend:
                asked = {}
                for cell in sorted(diverging, key=lambda c: (c.jit, c.device)):  # float64 once per backend
                    asked[cell] = (cell.backend not in evidence.float64 and all(c.backend != cell.backend for c in asked),
                                   NUDGED_RUNS)
                asked[reference] = (False, MORE_NUDGED_RUNS)  # a wider sample of round-off before it is said
                run(check, reference, asked)
                again = True
        return {cell: judge.cell_record(cell, replies) for cell in cells} if again else records

    def localize(self, case: Case, case_ref: CaseRef, judge: Judge, records: dict[Cell, dict],
                 replies: CaseReplies, common: dict, case_dir: str) -> None:
        """Phase 5, for the cells whose outputs mismatched or whose training first diverged in a
        loss: the reference cell taps its layers, then each such cell compares its own taps
        with them, side by side (`harness.localize`); the records get what they found."""
        for (check, *step), cells in localize.wanted(records, replies).items():
            reference = Cell.parse(records[cells[0]]["checks"][check]["compared_with"])
            if reference.backend == KERAS2:
                for cell in cells:
                    records[cell]["notes"].append(
                        f"{check}: not localized to a layer: the reference is the keras2 cell, and the localization "
                        f"taps layers with Keras 3 code on both sides")
                continue
            folder = os.path.join(case_dir, "localize-" + "-".join([check, *map(str, step)]))
            weights = common["weights"] if not step else localize.step_weights(
                replies.check(reference, "train")["file"], step[0], common["weights"], folder + "-weights.npz")
            self.localize_group(case, case_ref, check, step, reference, cells, records, {**common, "weights": weights},
                                folder)
            for cell in cells:
                judge.refresh_failure(records[cell])

    def localize_group(self, case: Case, case_ref: CaseRef, check: str, step: list, reference: Cell,
                       cells: list[Cell], records: dict[Cell, dict], common: dict, folder: str,
                       reproducers: bool = True) -> None:
        """One localization: `reference` taps its layers (and again in float64), then each of
        `cells` compares its own taps with them, side by side; the records get what they found.
        A reproducer is written where it can be checked in fresh processes of both cells'
        interpreters: within one environment."""
        base = {**common, "type": "localize", "training": check == "train", "rtol": case.rtol, "atol": case.atol,
                "reference_cell": reference.id}
        replies_of: dict[Cell, Outcome] = {}

        def job(cell: Cell, **request) -> Job:
            out_dir = os.path.join(folder, cell.id)
            os.makedirs(out_dir)
            return Job(cell.worker_key, {**base, "cell": cell.id, "out_dir": out_dir, **request}, self.timeout,
                       lambda outcome, cell=cell: replies_of.__setitem__(cell, outcome))

        self.pool.run([job(reference, reference=None, float64=True)])
        found = replies_of[reference].reply or {"error": f"the reference's worker: {replies_of[reference].message}"}
        if not found.get("error"):
            float64 = {"float64_file": found["float64_file"]} if found.get("float64_held") else {}
            self.pool.run([job(cell, reference={"file": found["file"], "calls": found["calls"], **float64},
                               repro_dir=reproducers and self.report_dir and localize.repro_folder(
                                   self.report_dir, case_ref.id, cell, check) or None) for cell in cells])
        localize.judge(records, check, reference, cells, {
            cell: (found if found.get("error") else replies_of[cell].reply or {
                "error": f"the worker: {replies_of[cell].status}: {replies_of[cell].message}"})
            for cell in cells}, found, case)

    def run_cross_checks(self, envs: list[EnvironmentRun], common: dict) -> None:
        """Phase 3: `.keras` and `.weights.h5` files across backends, and across environments both
        ways (every file another environment saved); SavedModels through TFSMLayer."""
        saved = {cell: path for run in envs for cell, path in run.replies.saved_files().items()}
        weights = {cell: os.path.join(os.path.dirname(path), "model.weights.h5") for cell, path in saved.items()}
        jobs = []
        for run in envs:
            replies = run.replies
            for key, loader in replies.file_cells.items():
                if loader.backend == KERAS2:
                    continue  # Keras 2 reads no Keras 3 file; Keras 3 reads its files in legacy_load
                others = {cell.id: path for cell, path in saved.items()
                          if cell.env != loader.env or cell.backend != loader.backend}
                reply = replies.reply(loader)
                if not others or reply is None or reply["checks"].get("save", {}).get("status") is None:
                    continue
                out_dir = os.path.join(run.folder, f"{loader.id}-loads")
                os.makedirs(out_dir)
                random = bool(replies.check(loader, "outputs").get("random"))
                other_envs = {cell.id: path for cell, path in weights.items() if cell.env != loader.env}
                jobs.append(Job(key, {**common, "type": "load_saved", "files": others, "weights_files": other_envs,
                                      "out_dir": out_dir, "random": random},
                                self.timeout, lambda o, loader=loader, replies=replies: replies.loaded.__setitem__(loader, o)))
            exported = replies.exported_files()
            reloader = (*EXPORT_RELOADER, run.env)
            if not exported:
                continue
            if "tensorflow" in installed_backends() and reloader not in self.pool.unavailable:
                out_dir = os.path.join(run.folder, "export-reloads")
                os.makedirs(out_dir)
                files = {cell.id: sm["file"] for cell, sm in exported.items()}
                structures = {cell.id: sm["input_structure"] for cell, sm in exported.items()}
                random = {cell.id: bool(replies.check(cell, "outputs").get("random")) for cell in exported}
                jobs.append(Job(reloader, {**common, "type": "reload_exports", "files": files,
                                           "structures": structures, "random": random,
                                           "out_dir": out_dir}, self.timeout,
                                lambda o, replies=replies: setattr(replies, "reloaded", o)))
            else:
                replies.reloaded = Outcome(status="skip", message="reloading a SavedModel needs a "
                                           "TensorFlow worker, and none can run here")
        self.pool.run(jobs)


def keras2_files(replies: CaseReplies, cell: Cell) -> dict | None:
    """What a Keras 3 cell reads of the keras2 reference's: its `.h5` files (weights, the model
    before and after training), its outputs and its training steps; None where there is none."""
    keras2 = next((c for c in replies.outcomes if c.backend == KERAS2 and replies.reply(c)), None)
    if cell.backend == KERAS2 or keras2 is None or keras2 != replies.weights_from:
        return None
    files = replies.reply(keras2).get("keras2_files", {})
    if not files.get("weights"):
        return None
    return {**files, "cell": keras2.id, "outputs": replies.check(keras2, "outputs").get("file"),
            "random": bool(replies.check(keras2, "outputs").get("random")),
            "train_steps": replies.check(keras2, "train").get("file")}


@dataclasses.dataclass
class EnvironmentRun:
    """One environment's share of a case: its cells, replies and records. The main environment's
    folder is the case's; another's is a subfolder, with a copy of the main initial weights."""

    env: str
    plan: CellPlan
    judge: Judge
    case_dir: str
    skipped: dict[Cell, str] = dataclasses.field(default_factory=dict)
    runnable: list[Cell] = dataclasses.field(default_factory=list)
    replies: CaseReplies | None = None
    records: dict[Cell, dict] = dataclasses.field(default_factory=dict)
    # Every cell loads given initial weights (another environment: the main one's; against a
    # baseline: the baseline's); else the reference writes them.
    weights_given: bool = False

    @property
    def folder(self) -> str:
        folder = os.path.join(self.case_dir, f"env-{self.env}") if self.env else self.case_dir
        os.makedirs(folder, exist_ok=True)
        return folder

    @property
    def weights_path(self) -> str:
        return os.path.join(self.folder, "reference_weights.npz")
