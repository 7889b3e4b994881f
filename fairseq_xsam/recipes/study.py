"""The Multi30k optimizer study, run by a plan and resumable across sessions.

The plan (TOML, default ``study.toml`` next to this file) lists the runs in order; each run is
train -> evaluate (three test sets) -> sharpness -> copy of what is committed (``command.txt``,
``train.log``, ``timing.json``, ``eval/*.json``, ``eval/*.hyp.en``; never checkpoints) into
``RESULTS/runs/<LABEL>-seed<SEED>/``, then the next. A run whose folder there holds
``timing.json`` is done and never run again; an interrupted one resumes (fairseq resumes from
``checkpoint_last.pt`` under ``RUNS``; finished stages are not repeated).

Plan keys: ``preset``, ``runs`` (checkpoints, outside git), ``results``, ``cpu``, ``threads``
(OMP_NUM_THREADS), and ``[[run]]`` tables: ``opt`` (or a list), ``seeds``, ``label`` (with
``{opt}`` / ``{rho}``), ``rho`` (a number, a list, or ``"sweep"``: the ρ of this optimizer's
``sweep = true`` runs with the lowest best validation loss, once they are all done),
``probe_ratio`` (--probe-rho = probe_ratio × ρ; default the recipe's 3), ``args``
(more train.sh options, e.g. ``["--max-epoch", "5"]`` or ``["--", "--alpha-max", "auto"]``),
``evaluate`` / ``sharpness`` (default true). Runs expand seed by seed, then optimizer, then ρ.
A run that repeats a finished sweep run with more epochs (same optimizer, seed, ρ and options)
continues that sweep run's last checkpoint (:func:`sweep_prefix`).

    study.py status                 # done / pending, times, the chosen ρ
    study.py run [--max-runs N]     # the next pending runs (start it twice: two workers)
    study.py run --until 13:50      # only the runs that finish before 13:50 (estimated)
    study.py report                 # RESULTS/report.md (xsam-report)
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import shutil
import sys
import time
import tomllib
from pathlib import Path
from typing import List, Optional

from ..report import cli as report_cli  # xsam-report
from ..report import logs
from . import multi30k as recipe
from .study_plan import (  # noqa: F401  (the plan's names, read as study.NAME)
    DEFAULT_EVAL_S,
    DEFAULT_PLAN,
    HERE,
    ROOT,
    SAFETY,
    PlanError,
    _list,
    _max_epoch,
    _without_max_epoch,
    best_valid_loss,
    chosen_rho,
    estimate_seconds,
    fits,
    is_done,
    load_plan,
    parse_until,
    passes,
    resolved_rho,
    results_dir,
    run_cost,
    started,
    sweep_prefix,
    validated_epochs,
    work_dir,
)

COMMITTED = ("command.txt", "run.json", "train.log", "timing.json")  # + eval/*.json, *.hyp.en


def train_argv(plan: dict, run: dict, rho: Optional[float]) -> List[str]:
    own, extra = recipe.base.split_extra(run["args"])
    argv = [run["opt"], str(run["seed"]), "--preset", plan["preset"], "--runs",
            str(ROOT / plan["runs"]), "--label", run["label"], "--quiet", *own]
    if "--data" not in own and plan.get("data"):
        argv += ["--data", str(ROOT / plan["data"])]
    if plan["cpu"]:
        argv.append("--cpu")
    if rho is not None:
        argv += ["--rho", repr(float(rho))]
        if run.get("probe_ratio") is not None:
            argv += ["--probe-rho", repr(float(run["probe_ratio"]) * float(rho))]
    return argv + (["--", *extra] if extra else [])


def copy_results(plan: dict, run: dict, extra: dict) -> Path:
    """Copies what is committed; timing.json (the done marker) last."""
    src, dst = work_dir(plan, run), results_dir(plan, run)
    (dst / "eval").mkdir(parents=True, exist_ok=True)
    for f in COMMITTED[:-1]:
        if f != "run.json" or (src / f).exists():  # runs begun before run.json have none
            shutil.copy2(src / f, dst / f)
    for f in sorted((src / "eval").glob("*.json")) + sorted((src / "eval").glob("*.hyp.en")) \
            if (src / "eval").is_dir() else []:
        shutil.copy2(f, dst / "eval" / f.name)
    timing = json.loads((src / "timing.json").read_text())
    timing.update(extra)
    (dst / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    return dst


def continue_sweep(plan: dict, run: dict, sweep: dict, log=print) -> bool:
    """Starts ``run``'s folder as a copy of ``sweep``'s (its checkpoints, train.log and timing;
    not command.txt: the run writes its own), all or nothing. False if the run has started."""
    src, dst = work_dir(plan, sweep), work_dir(plan, run)
    if dst.exists():
        return False
    tmp = dst.with_name(dst.name + ".continuing")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "checkpoints").mkdir(parents=True)
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        if (src / "checkpoints" / name).is_file():
            shutil.copy2(src / "checkpoints" / name, tmp / "checkpoints" / name)
    shutil.copy2(src / "train.log", tmp / "train.log")
    timing = json.loads((src / "timing.json").read_text())
    timing.update(finished=False, continued_from=sweep["name"])
    (tmp / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    tmp.rename(dst)
    log(f"study: {run['name']}: continues {sweep['name']} (its "
        f"{_max_epoch(plan, sweep['args'])} epochs are this run's first ones)")
    return True


def run_one(plan: dict, run: dict, log=print) -> bool:
    """Runs one planned run to the end; False if it has to wait for the sweep."""
    rho = resolved_rho(plan, run)
    if run["rho"] == "sweep" and rho is None:
        log(f"study: {run['name']}: waits for the sweep of {run['opt']}")
        return False
    work = work_dir(plan, run)
    sweep = sweep_prefix(plan, run, rho)
    if sweep is not None:
        continue_sweep(plan, run, sweep, log)
    argv = train_argv(plan, run, rho)
    log(f"study: {run['name']}: train.sh {' '.join(argv)}")
    recipe.train_main(argv)
    extra = {"study_started_evaluation": time.strftime("%Y-%m-%d %H:%M:%S"),
             "threads": int(plan["threads"])}  # of the process that finished it
    if run["evaluate"]:
        start = time.time()
        eval_argv = [str(work), "--preset", plan["preset"], "--quiet",
                     *(["--cpu"] if plan["cpu"] else []),
                     *([] if run["sharpness"] else ["--no-sharpness"])]
        done = (work / "eval" / "bleu.json").is_file() and (
            not run["sharpness"] or recipe.PRESETS[plan["preset"]]["sharpness"] is None
            or (work / "eval" / "sharpness.json").is_file())
        if not done:
            recipe.evaluate_main(eval_argv)
        extra["evaluate_s"] = round(time.time() - start, 1)
    extra["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    dst = copy_results(plan, run, extra)
    log(f"study: {run['name']}: done -> {dst}")
    return True


def prepare_data(plan: dict, log=print) -> None:
    preset = recipe.PRESETS[plan["preset"]]
    recipe.prepare(ROOT / (plan.get("data") or recipe.default_data(plan["preset"])),
                   vocab=preset["vocab"], train_lines=preset["train_lines"],
                   test_lines=preset["test_lines"], workers=int(plan["threads"]), log=log)


def status_lines(plan: dict) -> List[str]:
    out = []
    for run in plan["run"]:
        res, work = results_dir(plan, run), work_dir(plan, run)
        if is_done(plan, run):
            t = json.loads((res / "timing.json").read_text())
            found = logs.log_timing((res / "train.log").read_text(
                encoding="utf-8", errors="replace"))  # as the report reads it
            t.update({k: v for k, v in found.items() if v is not None})
            bleu = res / "eval" / "bleu.json"
            first = next(iter(json.loads(bleu.read_text()).items()), None) if bleu.is_file() \
                else None
            out.append(f"done     {run['name']}: finished {t.get('finished_at')}, train "
                       f"{(t.get('wall_s') or 0) / 60:.1f} min, {t.get('updates')} updates, "
                       f"{round(t.get('updates_per_s') or 0, 3)} updates/s, best valid loss "
                       f"{best_valid_loss(res)}"
                       + (f", {first[0]} sacreBLEU {first[1]['sacrebleu']}" if first else ""))
        elif (work / "train.log").is_file():
            out.append(f"started  {run['name']}: {validated_epochs(work)} epoch(s) validated "
                       f"({work.relative_to(ROOT) if work.is_relative_to(ROOT) else work})"
                       + _about(plan, run))
        else:
            rho = run["rho"]
            if rho == "sweep":
                chosen = chosen_rho(plan, run["opt"])
                rho = f"sweep -> {chosen}" if chosen is not None else "sweep (not done)"
            out.append(f"pending  {run['name']}: {run['opt']}"
                       + (f", rho {rho}" if rho is not None else "")
                       + (f", probe-rho {run['probe_ratio']:g} x rho" if run.get("probe_ratio")
                          else "")
                       + (f", {' '.join(run['args'])}" if run["args"] else "")
                       + _about(plan, run))
    return out


def _about(plan: dict, run: dict) -> str:
    need = estimate_seconds(plan, run)
    return f"; about {need / 60:.0f} min left to run" if need is not None else ""


def report(plan: dict) -> Path:
    res = ROOT / plan["results"]
    finished = [r for r in plan["run"] if is_done(plan, r)]
    main_runs = [results_dir(plan, r) for r in finished if not r["sweep"] and r["evaluate"]]
    # the validation-only runs (the sweep's, and any other run that is not scored on the test
    # sets, e.g. a sweep point added later with sweep = false) go into the sweep table
    sweep = [results_dir(plan, r) for r in finished if r["sweep"] or not r["evaluate"]]
    if not main_runs:
        raise SystemExit("study: no finished evaluated run to report yet (study.py status)")
    argv = [*map(str, main_runs), "--out", str(res), "--rescore", "--title",
            "Multi30k De-En: AdamW vs SAM vs XSAM"]
    if sweep:
        argv += ["--sweep", *map(str, sweep)]
    report_cli.main(argv)
    return res / "report.md"


# -- several workers share one plan ---------------------------------------------------------
# `study.py run` started twice (one per core) runs two runs side by side: each run is claimed
# by a file under RUNS/.claims/ holding its worker's pid; a claim whose process is gone (a
# session that ended) is stale and taken over.
WAIT_S = 60


def _claim_path(plan: dict, name: str) -> Path:
    return ROOT / plan["runs"] / ".claims" / (name.replace("/", "__") + ".pid")


def _process_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` (so that a reused pid is not taken for its worker)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _claim_alive(path: Path) -> bool:
    try:
        words = path.read_text().split()
    except FileNotFoundError:
        return False
    if not words:  # being written this instant
        return time.time() - path.stat().st_mtime < 10
    pid = int(words[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = words[1] if len(words) > 1 else None
    return started is None or started == _process_start(pid)


def _take(path: Path) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _claim_alive(path):
                return False
            path.unlink(missing_ok=True)  # stale: its worker is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {_process_start(os.getpid()) or ''}\n")
        return True
    return False


@contextlib.contextmanager
def claim(plan: dict, name: str, wait: bool = False):
    """Yields whether this worker holds ``name`` (with ``wait``: waits until it does)."""
    path = _claim_path(plan, name)
    mine = _take(path)
    while wait and not mine:
        time.sleep(1)
        mine = _take(path)
    try:
        yield mine
    finally:
        if mine:
            path.unlink(missing_ok=True)


def claimed_elsewhere(plan: dict, run: dict) -> bool:
    path = _claim_path(plan, run["name"])
    return path.exists() and _claim_alive(path) and path.read_text().split()[:1] != [
        str(os.getpid())]


def run_pending(plan: dict, only: Optional[str] = None, max_runs: Optional[int] = None,
                log=print, until: Optional[float] = None) -> int:
    """Runs the pending runs in plan order, except that runs already started (a checkpoint to
    resume from) go first, so that a run carried over from an earlier session is not left
    behind new ones; each is claimed first (another worker may hold it). After each finished
    run it starts again from the top (a finished sweep frees the runs that waited for it).
    When nothing is left to run here but another worker still holds a sweep run, this one
    waits for it when a pending run needs that sweep run. With ``until`` (epoch seconds) a run
    is started only if :func:`estimate_seconds` says that it finishes before then; the others
    are left for a later session. Returns the runs finished."""
    count = 0
    while max_runs is None or count < max_runs:
        finished = blocked = False
        for run in sorted(plan["run"], key=lambda r: not started(plan, r)):  # stable
            if is_done(plan, run) or (only and not fnmatch.fnmatch(run["name"], only)):
                continue
            if claimed_elsewhere(plan, run):
                continue
            ready = run["rho"] != "sweep" or resolved_rho(plan, run) is not None
            if ready and not fits(plan, run, until, log):
                continue
            with claim(plan, run["name"]) as mine:
                if not mine:  # another worker runs it
                    continue
                if is_done(plan, run):  # finished by another worker meanwhile
                    continue
                finished = run_one(plan, run, log)
            if finished:
                count += 1
                break
            waits_for = [r for r in plan["run"] if r["sweep"] and r["opt"] == run["opt"]
                         and not is_done(plan, r)]
            blocked |= any(claimed_elsewhere(plan, r) for r in waits_for)
        if finished:
            continue
        if not blocked:
            break
        log(f"study: waiting {WAIT_S} s for another worker's run")
        time.sleep(WAIT_S)
    return count


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="study.py", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("status", "run", "report"))
    p.add_argument("--plan", default=str(DEFAULT_PLAN), help="the plan (TOML)")
    p.add_argument("--max-runs", type=recipe.base.int_at_least(1),
                   help="run: stop after N runs")
    p.add_argument("--runs", metavar="DIR", help="checkpoints and logs (overrides the plan's "
                   "'runs'; keep it outside the checkout when the study spans sessions)")
    p.add_argument("--data", metavar="DIR", help="binarized data (overrides the plan's 'data'; "
                   "default: the preset's folder under data-bin/)")
    p.add_argument("--only", metavar="GLOB", help="run: only runs whose name matches, e.g. "
                   "'sweep/*'")
    p.add_argument("--until", metavar="TIME", type=parse_until,
                   help="run: start only the runs that finish before TIME ('HH:MM' or "
                   "'YYYY-MM-DD HH:MM', local time), estimated from the finished runs' logs: "
                   "set it to the session's end when checkpoints do not outlive the session")
    args = p.parse_args(argv)
    try:
        plan = load_plan(args.plan)
    except (PlanError, ValueError, OSError, tomllib.TOMLDecodeError) as e:
        p.error(str(e))
    if args.runs:
        plan["runs"] = str(Path(args.runs).resolve())
    if args.data:
        plan["data"] = str(Path(args.data).resolve())
    if args.command == "status":
        print("\n".join(status_lines(plan)))
        return 0
    if args.command == "report":
        print(f"study: wrote {report(plan)}")
        return 0
    os.environ["OMP_NUM_THREADS"] = str(plan["threads"])
    os.environ["MKL_NUM_THREADS"] = str(plan["threads"])
    with claim(plan, "prepare", wait=True):
        prepare_data(plan)
    count = run_pending(plan, args.only, args.max_runs, until=args.until)
    print(f"study: {count} run(s) finished in this session")
    print("\n".join(status_lines(plan)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
