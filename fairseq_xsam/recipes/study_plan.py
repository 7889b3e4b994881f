"""The study's plan (study.toml) and what it decides: the runs it expands to, where each lives,
which are done, the ρ a sweep chose, the sweep run a longer run continues, and the time a run
is estimated to take (``study.py run --until``). The driver is :mod:`.study`."""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path
from typing import Optional

from ..report import logs
from . import multi30k as recipe

ROOT = recipe.ROOT


HERE = recipe.HERE


DEFAULT_PLAN = HERE / "study.toml"


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
    valid = logs.parse_train_log(log.read_text(encoding="utf-8", errors="replace"))
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


def _max_epoch(plan: dict, args) -> Optional[int]:
    """--max-epoch of a run's own train.sh options, else its preset's."""
    own, _ = recipe.base.split_extra(args)
    if "--max-epoch" in own:
        return int(own[own.index("--max-epoch") + 1])
    return recipe.PRESETS[plan["preset"]]["table"].get(("optimization", "max_epoch"))


def _without_max_epoch(args) -> list:
    own, extra = recipe.base.split_extra(args)
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


# -- what a run costs, so that a session starts only the runs it can finish ----------------
# A machine may be new at every session (checkpoints gone), so a run that cannot finish before
# the session ends is time lost. The estimate comes from the finished runs' own logs.
SAFETY = 1.1          # the estimate is multiplied by this


DEFAULT_EVAL_S = 900  # evaluation, until an evaluated run has measured it (timing evaluate_s)


def passes(run: dict) -> int:
    """Forward/backward passes per update: 1 for adamw, 1 + --ascent-steps for the others."""
    if run["opt"] == "adamw":
        return 1
    own, extra = recipe.base.split_extra(run["args"])
    steps = 1
    for args in (own, extra):  # train.sh's --ascent-steps, then fairseq's (the last one wins)
        if "--ascent-steps" in args:
            steps = int(args[args.index("--ascent-steps") + 1])
    return 1 + steps


def validated_epochs(folder: Path) -> int:
    log = folder / "train.log"
    if not log.is_file():
        return 0
    return len(logs.parse_train_log(log.read_text(encoding="utf-8",
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
    t, epochs = logs.log_timing(text), validated_epochs(res)
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
