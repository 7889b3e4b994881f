"""A run folder as the report reads it (train.log through :mod:`.logs`, eval/bleu.json,
eval/sharpness.json, timing.json, run.json), grouping by label and mean ± std."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional

from . import run_record
from .logs import log_timing, parse_hf_history, parse_train_log

ROOT = Path(__file__).resolve().parents[2]  # the repository: references named in bleu.json


class ReportError(ValueError):
    """A run folder or a file the report needs is missing or inconsistent (the command line
    prints it and exits with status 1)."""


ORDER = ("adamw", "sam", "xsam", "fixed", "msam", "msam+", "lsam", "lsam+")


FLATNESS_KEYS = ("lambda_max", "lambda_ratio", "avg_sharpness")


FLATNESS_DIGITS = {"lambda_max": 2, "lambda_ratio": 3, "avg_sharpness": 4}


def label_and_seed(run: Path):
    name = run.name
    if "-seed" not in name:
        raise ReportError(f"{run}: a run directory must be named <OPT>-seed<SEED> "
                         "(as train.sh names it)")
    label, _, seed = name.partition("-seed")
    return label, seed


def load_run(run: Path, allow_missing: bool) -> dict:
    label, seed = label_and_seed(run)
    log = run / "train.log"
    if not log.is_file():
        raise ReportError(f"{run}: no train.log (not a train.sh run directory)")
    info = {"run": run, "name": run.name, "label": label, "seed": seed,
            **parse_train_log(log.read_text(encoding="utf-8", errors="replace"))}
    info["record"] = run_record.read(run)  # run.json: the run's settings
    cmd = run / "command.txt"
    info["command"] = cmd.read_text().strip() if cmd.is_file() else None
    bleu = run / "eval" / "bleu.json"
    if bleu.is_file():
        info["bleu"] = json.loads(bleu.read_text())
    elif allow_missing:
        info["bleu"] = None
    else:
        raise ReportError(f"{run}: no eval/bleu.json: evaluate it first "
                         f"(recipes/iwslt14_de_en/evaluate.sh {run}) or pass --allow-missing")
    sharp = run / "eval" / "sharpness.json"
    info["sharpness"] = json.loads(sharp.read_text()) if sharp.is_file() else None
    info["scores"] = test_set_scores(info["bleu"])
    info["multi"] = bool(info["bleu"]) and "sacrebleu" not in info["bleu"]
    timing = run / "timing.json"
    info["timing"] = json.loads(timing.read_text()) if timing.is_file() else None
    # the cost from the log itself (the same for every run, whenever its timing.json was written):
    # updates/s = the median over epochs (an epoch in which the machine stalled does not count),
    # wall-clock = every fairseq process that wrote the log, killed ones too
    found = log_timing(log.read_text(encoding="utf-8", errors="replace"))
    history = run / "log_history.json"  # a Hugging Face Trainer run (xsam-hf-multi30k)
    if history.is_file():
        hf = parse_hf_history(json.loads(history.read_text()))
        info["valid"], info["updates"] = hf["valid"], hf["updates"]
        found = {**hf["timing"], "day": found["day"]} if hf["timing"] else found
    if found["updates_per_s"] and found["updates"]:
        info["timing"] = {**(info["timing"] or {}), **found}
    return info


def test_set_scores(bleu: Optional[dict]) -> Dict[str, dict]:
    """{test set: scores} of a bleu.json of either layout (one test set is named "test")."""
    if not bleu:
        return {}
    if "sacrebleu" in bleu:
        return {"test": {**bleu, "signature": bleu.get("sacrebleu_signature")}}
    return bleu


def mean_std(values: List[float]):
    """(mean, sample std or None when n < 2, n)."""
    n = len(values)
    if n == 0:
        return None, None, 0
    return statistics.mean(values), (statistics.stdev(values) if n > 1 else None), n


def fmt(mean, std, digits=2) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def fmt_n(values: List[float], digits=2) -> str:
    """mean ± sample std (n) of the values."""
    mean, std, n = mean_std(values)
    return "–" if not n else f"{fmt(mean, std, digits)} (n={n})"


def group(runs: List[dict]) -> Dict[str, List[dict]]:
    labels = sorted({r["label"] for r in runs},
                    key=lambda x: (ORDER.index(x) if x in ORDER else len(ORDER), x))
    return {lab: sorted([r for r in runs if r["label"] == lab], key=lambda r: r["seed"])
            for lab in labels}


def summarise(groups: Dict[str, List[dict]]) -> Dict[str, dict]:
    out = {}
    for lab, runs in groups.items():
        scored = [r for r in runs if r["bleu"]]
        row = {"n": len(scored)}
        for key in ("tokenized_bleu", "sacrebleu"):  # the first test set
            row[key] = mean_std([float(next(iter(r["scores"].values()))[key]) for r in scored])
        row["updates"] = sorted({r["updates"] for r in runs if r["updates"] is not None})
        flat = [r["sharpness"] for r in runs if r["sharpness"]]
        row["flatness"] = {k: mean_std([float(f[k]) for f in flat if f.get(k) is not None])
                           for k in FLATNESS_KEYS} if flat else None
        out[lab] = row
    return out


def _delta(summary, lab, base, key) -> str:
    if base not in summary or lab == base:
        return "–"
    a, b = summary[lab][key][0], summary[base][key][0]
    return "–" if a is None or b is None else f"{a - b:+.2f}"


def test_sets(runs: List[dict]) -> List[str]:
    names: List[str] = []
    for r in runs:
        names += [t for t in r["scores"] if t not in names]
    return names


def rho_of(info: dict) -> Optional[float]:
    """The run's ρ (``rho`` of its run.json), None without one (AdamW)."""
    rho = (info.get("record") or {"settings": {}})["settings"].get("rho")
    return None if rho is None else float(rho)
