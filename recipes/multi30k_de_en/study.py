#!/usr/bin/env python3
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
    study.py report                 # RESULTS/report.md with scripts/compare_bleu.py
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent / "scripts"))
import compare_bleu  # noqa: E402  (scripts/compare_bleu.py: log parsing and the report)
import recipe  # noqa: E402  (recipe.py next to this file)

sys.path[:2] = []

ROOT = recipe.ROOT
DEFAULT_PLAN = HERE / "study.toml"
COMMITTED = ("command.txt", "train.log", "timing.json")  # + eval/*.json, eval/*.hyp.en


class PlanError(ValueError):
    pass


def _list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def load_plan(path) -> dict:
    """The plan with its runs expanded: [{name, label, opt, seed, rho, args, sweep, evaluate,
    sharpness}], in order."""
    with open(path, "rb") as f:
        plan = tomllib.load(f)
    plan.setdefault("preset", "study")
    plan.setdefault("runs", recipe.DEFAULT_RUNS)
    plan.setdefault("results", "docs/results/multi30k")
    plan.setdefault("cpu", True)
    plan.setdefault("threads", 2)
    if plan["preset"] not in recipe.PRESETS:
        raise PlanError(f"{path}: preset {plan['preset']!r} (allowed: {', '.join(recipe.PRESETS)})")
    runs, names = [], set()
    for i, entry in enumerate(plan.get("run", [])):
        unknown = set(entry) - {"opt", "seeds", "label", "rho", "probe_ratio", "args", "sweep",
                                "evaluate", "sharpness"}
        if unknown or "opt" not in entry:
            raise PlanError(f"{path}: run {i + 1}: " + (f"unknown keys {sorted(unknown)}" if
                            unknown else "no opt") + " (allowed: opt, seeds, label, rho, "
                            "probe_ratio, args, sweep, evaluate, sharpness)")
        ratio = entry.get("probe_ratio")
        if ratio is not None and not (isinstance(ratio, (int, float)) and ratio > 0):
            raise PlanError(f"{path}: run {i + 1}: probe_ratio {ratio!r} (allowed: a number > 0:"
                            " --probe-rho = probe_ratio x rho)")
        for seed in _list(entry.get("seeds", 1)):
            for opt in _list(entry["opt"]):
                if opt not in recipe.OPTIMIZERS:
                    raise PlanError(f"{path}: run {i + 1}: opt {opt!r} (allowed: "
                                    f"{', '.join(recipe.OPTIMIZERS)})")
                rhos = [None] if opt == "adamw" else _list(entry.get("rho", [None]))
                for rho in rhos:
                    if not (rho is None or rho == "sweep" or isinstance(rho, (int, float))):
                        raise PlanError(f"{path}: run {i + 1}: rho {rho!r} (allowed: a number "
                                        "> 0 or \"sweep\")")
                    label = entry.get("label", "{opt}").format(opt=opt, rho=rho)
                    recipe.check_label(label)
                    name = f"{label}-seed{seed}"
                    if name in names:
                        raise PlanError(f"{path}: run {name} is planned twice")
                    names.add(name)
                    runs.append({"name": name, "label": label, "opt": opt, "seed": int(seed),
                                 "rho": rho, "probe_ratio": ratio,
                                 "args": [str(a) for a in entry.get("args", [])],
                                 "sweep": bool(entry.get("sweep", False)),
                                 "evaluate": entry.get("evaluate", True),
                                 "sharpness": entry.get("sharpness", True)})
    plan["run"] = runs
    return plan


def results_dir(plan: dict, run: dict) -> Path:
    return ROOT / plan["results"] / "runs" / run["name"]


def work_dir(plan: dict, run: dict) -> Path:
    return ROOT / plan["runs"] / run["name"]


def is_done(plan: dict, run: dict) -> bool:
    return (results_dir(plan, run) / "timing.json").is_file()


def best_valid_loss(folder: Path) -> Optional[float]:
    log = folder / "train.log"
    if not log.is_file():
        return None
    valid = compare_bleu.parse_train_log(log.read_text(encoding="utf-8", errors="replace"))
    losses = [v["loss"] for v in valid["valid"].values() if "loss" in v]
    return min(losses) if losses else None


def chosen_rho(plan: dict, opt: str) -> Optional[float]:
    """The ρ of this optimizer's sweep runs with the lowest best validation loss (ties: the
    smaller ρ), or None while a sweep run is not done."""
    sweep = [r for r in plan["run"] if r["sweep"] and r["opt"] == opt]
    if not sweep:
        raise PlanError(f"rho = \"sweep\" for {opt}, but the plan has no sweep = true runs of "
                        f"{opt}")
    if not all(is_done(plan, r) for r in sweep):
        return None
    scored = [(best_valid_loss(results_dir(plan, r)), float(r["rho"])) for r in sweep]
    if any(loss is None for loss, _ in scored):
        raise PlanError(f"a sweep run of {opt} has no validation loss in its train.log")
    return min(scored)[1]


def resolved_rho(plan: dict, run: dict) -> Optional[float]:
    """The run's ρ: its own, or for ``rho = "sweep"`` the chosen one (None until then)."""
    return chosen_rho(plan, run["opt"]) if run["rho"] == "sweep" else run["rho"]


def train_argv(plan: dict, run: dict, rho: Optional[float]) -> List[str]:
    own, extra = recipe.common.split_extra(run["args"])
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
        shutil.copy2(src / f, dst / f)
    for f in sorted((src / "eval").glob("*.json")) + sorted((src / "eval").glob("*.hyp.en")) \
            if (src / "eval").is_dir() else []:
        shutil.copy2(f, dst / "eval" / f.name)
    timing = json.loads((src / "timing.json").read_text())
    timing.update(extra)
    (dst / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    return dst


def _max_epoch(plan: dict, args) -> Optional[int]:
    """--max-epoch of a run's own train.sh options, else its preset's."""
    own, _ = recipe.common.split_extra(args)
    if "--max-epoch" in own:
        return int(own[own.index("--max-epoch") + 1])
    return recipe.PRESETS[plan["preset"]]["table"].get(("optimization", "max_epoch"))


def _without_max_epoch(args) -> list:
    own, extra = recipe.common.split_extra(args)
    if "--max-epoch" in own:
        i = own.index("--max-epoch")
        own = own[:i] + own[i + 2:]
    return own + (["--", *extra] if extra else [])


def sweep_prefix(plan: dict, run: dict, rho) -> Optional[dict]:
    """The finished sweep run that trained this run's first epochs already: the same optimizer,
    seed, ρ, probe ratio and options but a shorter --max-epoch. Its epochs are this run's (same
    seed and settings; the inverse-sqrt schedule does not depend on the epoch count), so this
    run continues from its last checkpoint instead of training them again. None if there is
    none, or its checkpoint is gone."""
    if run["sweep"] or rho is None:
        return None
    longer = _max_epoch(plan, run["args"])
    for r in plan["run"]:
        if (r["sweep"] and r["opt"] == run["opt"] and r["seed"] == run["seed"]
                and r["rho"] not in (None, "sweep") and float(r["rho"]) == float(rho)
                and r.get("probe_ratio") == run.get("probe_ratio")
                and _without_max_epoch(r["args"]) == _without_max_epoch(run["args"])
                and (_max_epoch(plan, r["args"]) or 0) < (longer or 0)
                and is_done(plan, r)
                and (work_dir(plan, r) / "checkpoints" / "checkpoint_last.pt").is_file()):
            return r
    return None


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


# -- what a run costs, so that a session starts only the runs it can finish ----------------
# A machine may be new at every session (checkpoints gone), so a run that cannot finish before
# the session ends is time lost. The estimate comes from the finished runs' own logs.
SAFETY = 1.1          # the estimate is multiplied by this
DEFAULT_EVAL_S = 900  # evaluation, until an evaluated run has measured it (timing evaluate_s)


def passes(run: dict) -> int:
    """Forward/backward passes per update: 1 for adamw, 1 + --ascent-steps for the others."""
    if run["opt"] == "adamw":
        return 1
    own, extra = recipe.common.split_extra(run["args"])
    steps = 1
    for args in (own, extra):  # train.sh's --ascent-steps, then fairseq's (the last one wins)
        if "--ascent-steps" in args:
            steps = int(args[args.index("--ascent-steps") + 1])
    return 1 + steps


def validated_epochs(folder: Path) -> int:
    log = folder / "train.log"
    if not log.is_file():
        return 0
    return len(compare_bleu.parse_train_log(log.read_text(encoding="utf-8",
                                                          errors="replace"))["valid"])


def started(plan: dict, run: dict) -> bool:
    """The run has a checkpoint here to resume from (it began in this or an earlier session
    whose machine kept ``RUNS``)."""
    return (work_dir(plan, run) / "checkpoints" / "checkpoint_last.pt").is_file()


def run_cost(plan: dict, run: dict) -> Optional[dict]:
    """A finished run's measured cost: seconds of training per pass per update (its median
    epoch rate), updates and other seconds (validation, checkpoints, α search) per epoch, and
    its evaluation seconds; None without the numbers."""
    res = results_dir(plan, run)
    text = (res / "train.log").read_text(encoding="utf-8", errors="replace")
    t, epochs = recipe.common.log_timing(text), validated_epochs(res)
    if not (t["updates_per_s"] and t["updates"] and t["wall_s"] and t["train_wall_s"]
            and epochs):
        return None
    timing = json.loads((res / "timing.json").read_text())
    return {"finished_at": timing.get("finished_at") or "",
            "pass_s": 1.0 / t["updates_per_s"] / passes(run),
            "updates_per_epoch": t["updates"] / epochs,
            "other_s_per_epoch": max(0.0, t["wall_s"] - t["train_wall_s"]) / epochs,
            "evaluate_s": timing.get("evaluate_s") if run["evaluate"] else None}


def estimate_seconds(plan: dict, run: dict) -> Optional[float]:
    """Seconds this run still needs here (training of the epochs not yet checkpointed, then
    evaluation), from the latest finished run with the same passes per update (else the latest
    finished run, scaled by passes), times :data:`SAFETY`; None before any run has finished."""
    costs = [(c["finished_at"], passes(r), c) for r in plan["run"] if is_done(plan, r)
             for c in [run_cost(plan, r)] if c is not None]
    if not costs:
        return None
    same = [x for x in costs if x[1] == passes(run)]
    ref = max(same or costs, key=lambda x: x[0])[2]
    work, total = work_dir(plan, run), _max_epoch(plan, run["args"]) or 0
    done = validated_epochs(work) if started(plan, run) else 0
    sweep = sweep_prefix(plan, run, resolved_rho(plan, run)) if not done else None
    if sweep is not None:
        done = _max_epoch(plan, sweep["args"]) or 0
    epoch_s = (ref["updates_per_epoch"] * ref["pass_s"] * passes(run)
               + ref["other_s_per_epoch"])
    seconds = max(0, total - done) * epoch_s
    if run["evaluate"] and not (work / "eval" / "bleu.json").is_file():
        measured = [c["evaluate_s"] for _, _, c in costs if c["evaluate_s"]]
        seconds += max(measured) if measured else DEFAULT_EVAL_S
    return SAFETY * seconds


def parse_until(text: str, now: Optional[float] = None) -> float:
    """--until: 'HH:MM' (its next occurrence) or 'YYYY-MM-DD HH:MM', local time -> epoch
    seconds (argparse type)."""
    now = time.time() if now is None else now
    allowed = "(allowed: HH:MM or 'YYYY-MM-DD HH:MM', local time, in the future)"
    for fmt in ("%Y-%m-%d %H:%M", "%H:%M"):
        try:
            parsed = time.strptime(text.strip(), fmt)
        except ValueError:
            continue
        if fmt == "%H:%M":
            day = time.localtime(now)
            stamp = time.mktime((day.tm_year, day.tm_mon, day.tm_mday, parsed.tm_hour,
                                 parsed.tm_min, 0, 0, 0, -1))
            if stamp <= now:
                stamp += 24 * 3600
        else:
            stamp = time.mktime(parsed)
        if stamp <= now:
            raise argparse.ArgumentTypeError(f"{text!r} is in the past {allowed}")
        return stamp
    raise argparse.ArgumentTypeError(f"{text!r} {allowed}")


def fits(plan: dict, run: dict, until: Optional[float], log=print) -> bool:
    """Whether ``run`` can finish before ``until`` (always, without a deadline)."""
    if until is None:
        return True
    need, left = estimate_seconds(plan, run), until - time.time()
    if need is None:
        log(f"study: {run['name']}: no finished run to estimate its cost from; starts anyway")
        return True
    if need <= left:
        return True
    log(f"study: {run['name']}: left for a later session: needs about {need / 60:.0f} min, "
        f"{max(0.0, left) / 60:.0f} min left before --until")
    return False


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
            found = recipe.common.log_timing((res / "train.log").read_text(
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
    done = [results_dir(plan, r) for r in plan["run"] if is_done(plan, r)]
    main_runs = [d for d, r in zip(done, [r for r in plan["run"] if is_done(plan, r)])
                 if not r["sweep"] and r["evaluate"]]
    sweep = [d for d, r in zip(done, [r for r in plan["run"] if is_done(plan, r)]) if r["sweep"]]
    if not main_runs:
        raise SystemExit("study: no finished evaluated run to report yet (study.py status)")
    argv = [*map(str, main_runs), "--out", str(res), "--rescore", "--title",
            "Multi30k De-En: AdamW vs SAM vs XSAM"]
    if sweep:
        argv += ["--sweep", *map(str, sweep)]
    compare_bleu.main(argv)
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
    p.add_argument("--max-runs", type=recipe.common.int_at_least(1),
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
