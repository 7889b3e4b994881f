"""report.md: the tables of one test set (IWSLT14, the demo) or several (Multi30k)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

from .plots import plots
from .runs import (
    FLATNESS_DIGITS,
    FLATNESS_KEYS,
    _delta,
    fmt,
    fmt_n,
    group,
    mean_std,
    rho_of,
    summarise,
    test_sets,
)
from .stats import significance

SCORING = ("Tokenized BLEU is fairseq-generate's `BLEU4` (beam 5, `--remove-bpe`, the whole "
           "test set), the number fairseq and the paper report; sacreBLEU scores the "
           "Moses-detokenized output (signature below).")


def report(runs: List[dict], out: Path, title: str, note: Optional[str],
           scoring: str = SCORING, **multi) -> str:
    if any(r["multi"] for r in runs):
        return report_multi(runs, out, title, note, **multi)
    groups = group(runs)
    summary = summarise(groups)
    images = plots(groups, summary, out, title)
    lines = _title(title, note)
    lines += [scoring + " Mean ± sample standard deviation over seeds (n runs); Δ = difference "
              "of the means.", "",
              "| optimizer | n | tokenized BLEU | Δ adamw | Δ sam | sacreBLEU | Δ adamw | Δ sam "
              "| updates |", "|---|---|---|---|---|---|---|---|---|"]
    for lab, row in summary.items():
        lines.append(
            f"| {lab} | {row['n']} | {fmt(*row['tokenized_bleu'][:2])} | "
            f"{_delta(summary, lab, 'adamw', 'tokenized_bleu')} | "
            f"{_delta(summary, lab, 'sam', 'tokenized_bleu')} | {fmt(*row['sacrebleu'][:2])} | "
            f"{_delta(summary, lab, 'adamw', 'sacrebleu')} | "
            f"{_delta(summary, lab, 'sam', 'sacrebleu')} | "
            f"{', '.join(map(str, row['updates'])) or '–'} |")
    if any(row["flatness"] for row in summary.values()):
        lines += ["", "## Flatness beside BLEU", "",
                  "From `eval/sharpness.json` (xsam-flatness); mean ± sample std.", "",
                  "| optimizer | tokenized BLEU | " + " | ".join(FLATNESS_KEYS) + " |",
                  "|---|---|" + "---|" * len(FLATNESS_KEYS)]
        for lab, row in summary.items():
            if row["flatness"]:
                cells = [fmt(*row["flatness"][k][:2], digits=FLATNESS_DIGITS[k])
                         for k in FLATNESS_KEYS]
                lines.append(f"| {lab} | {fmt(*row['tokenized_bleu'][:2])} | "
                             + " | ".join(cells) + " |")
    lines += ["", "## Runs", "",
              "| run | tokenized BLEU | sacreBLEU | hypotheses | updates | last valid loss | "
              "checkpoint |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        last = r["valid"][max(r["valid"])].get("loss") if r["valid"] else None
        b = r["bleu"]
        lines.append(
            f"| {r['name']} | {b['tokenized_bleu'] if b else '–'} | "
            f"{b['sacrebleu'] if b else '–'} | {b['hypotheses'] if b else '–'} | "
            f"{r['updates'] if r['updates'] is not None else '–'} | "
            f"{last if last is not None else '–'} | {b['checkpoint'] if b else '–'} |")
    lines += _missing(runs, lambda r: r["bleu"] is None)
    sigs = sorted({f"{r['bleu']['sacrebleu_signature']}" for r in runs if r["bleu"]})
    lines += ["", "## sacreBLEU signature", ""] + [f"- `{s}`" for s in sigs]
    refs = sorted({r["bleu"].get("sacrebleu_references", "") for r in runs if r["bleu"]} - {""})
    lines += [f"- references: {x}" for x in refs]
    alpha_runs = [r for r in runs if r["alpha"]]
    if alpha_runs:
        lines += ["", "## Alpha searches (XSAM)", ""]
        for r in alpha_runs:
            lines.append(f"- {r['name']}: " + ", ".join(f"update {u}: {a:.2f}"
                                                          for u, a in r["alpha"]))
    return _write(out, lines + _plots_and_commands(runs, images, with_generate=True))


MULTI_SCORING = ("sacreBLEU scores the detokenized (SentencePiece-decoded) hypotheses against the "
                 "raw, cased references (signature below); tokenized BLEU is fairseq-generate's "
                 "`BLEU4` on the same output: the SentencePiece-decoded text split at spaces, "
                 "cased (this pipeline has no Moses tokenizer, so punctuation stays attached to "
                 "words: not comparable to the Moses-tokenized BLEU of IWSLT14 papers). Beam 5, "
                 "every sentence of every test set translated (checked).")


def sweep_rows(sweep: List[dict]) -> List[dict]:
    """The ρ sweep: per run, ρ (from run.json) and the best validation loss and its epoch."""
    rows = []
    for r in sweep:
        losses = {e: v["loss"] for e, v in r["valid"].items() if "loss" in v}
        best = min(losses, key=lambda e: (losses[e], e)) if losses else None
        rows.append({"run": r["name"], "label": r["label"], "rho": rho_of(r),
                     "best_loss": losses.get(best), "best_epoch": best,
                     "epochs": max(losses) if losses else None, "updates": r["updates"]})
    return rows


class CostRow(NamedTuple):
    """One row of the cost table: wall-clock minutes, updates/s and updates of each run."""
    label: str
    runs: int
    wall_min: List[float]
    updates_per_s: List[float]
    updates: List[int]
    day: Optional[str]


def cost_rows(groups: Dict[str, List[dict]]) -> List[CostRow]:
    """A :class:`CostRow` per optimizer. Speeds measured
    under different conditions are not averaged: runs whose timing.json records a number of
    threads per process (``threads``) other than the rest of their optimizer's, or that
    finished on another day (``day``: every session runs on a machine of its own), get a row of
    their own, "label (N threads)", "label (YYYY-MM-DD)" or both (runs without the thread
    record share the plain row). ``day`` is the row's day, None where its runs do not say."""
    rows = []
    for lab, runs in groups.items():
        by_key: Dict[tuple, List[dict]] = {}
        for r in runs:
            if r["timing"]:
                t = r["timing"]
                by_key.setdefault((t.get("threads"), t.get("day")), []).append(t)
        threads_differ = len({k[0] for k in by_key}) > 1
        days_differ = len({k[1] for k in by_key}) > 1
        for key in sorted(by_key, key=lambda k: (k[1] or "", k[0] is not None, k[0] or 0)):
            threads, day = key
            t = by_key[key]
            parts = []
            if threads_differ and threads is not None:
                parts.append(f"{threads} thread{'' if threads == 1 else 's'}")
            if days_differ and day:
                parts.append(day)
            name = f"{lab} ({', '.join(parts)})" if parts else lab
            wall = [x["wall_s"] / 60 for x in t if x.get("wall_s")]
            ups = [x["updates_per_s"] for x in t if x.get("updates_per_s")]
            updates = sorted({x["updates"] for x in t if x.get("updates")})
            rows.append(CostRow(name, len(t), wall, ups, updates, day))
        if not by_key:
            rows.append(CostRow(lab, 0, [], [], [], None))
    return rows


def report_multi(runs: List[dict], out: Path, title: str, note: Optional[str],
                 sweep: Optional[List[dict]] = None, refs_dir: Optional[Path] = None,
                 rescored: Optional[List[dict]] = None, bootstrap: int = 1000) -> str:
    """report.md of runs scored on several test sets: one section after another."""
    groups = group(runs)
    summary = summarise(groups)
    images = plots(groups, summary, out, title)
    names = test_sets(runs)
    seeds = {lab: len([r for r in rs if r["scores"]]) for lab, rs in groups.items()}
    lines = _title(title, note)
    lines += [f"Runs: {len(runs)} ({', '.join(f'{lab}: {n} seed(s)' for lab, n in seeds.items())})."
              f" {MULTI_SCORING} Mean ± sample standard deviation over seeds (n seeds).", ""]
    lines += _bleu_tables(groups, names)
    lines += _significance_section(significance(runs, refs_dir, bootstrap), bootstrap)
    lines += _flatness_section(summary, names[0])
    lines += _cost_section(groups)
    lines += _alpha_section(runs)
    lines += _sweep_section(sweep)
    lines += _runs_section(runs, names, rescored)
    sigs = sorted({s["signature"] for r in runs for s in r["scores"].values()})
    lines += ["", "## sacreBLEU signature", ""] + [f"- `{x}`" for x in sigs]
    return _write(out, lines + _plots_and_commands(runs, images, with_generate=False))


def _title(title: str, note: Optional[str]) -> List[str]:
    return [f"# {title}", ""] + ([f"> {note}", ""] if note else [])


def _plots_and_commands(runs: List[dict], images: List[str], with_generate: bool) -> List[str]:
    lines = ["", "## Plots", ""] + [f"![{i}]({i})" for i in images]
    lines += ["", "## Commands", ""]
    for r in runs:
        lines += [f"{r['name']}:", "", "```", r["command"] or "(no command.txt)", "```", ""]
        if with_generate and r["bleu"]:
            lines += ["```", r["bleu"]["command"], "```", ""]
    return lines


def _write(out: Path, lines: List[str]) -> str:
    text = "\n".join(lines).rstrip() + "\n"
    (out / "report.md").write_text(text, encoding="utf-8")
    return text


def _bleu_tables(groups: Dict[str, List[dict]], names: List[str]) -> List[str]:
    lines: List[str] = []
    for key, what in (("sacrebleu", "sacreBLEU"), ("tokenized_bleu", "tokenized BLEU (fairseq)")):
        lines += [f"## {what}", "", "| optimizer | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for lab, rs in groups.items():
            cells = [fmt_n([float(r["scores"][n][key]) for r in rs if n in r["scores"]])
                     for n in names]
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _significance_section(sig: List[dict], bootstrap: int) -> List[str]:
    if not sig:
        return []
    lines = ["## Paired bootstrap test (sacreBLEU)", "",
             f"sacreBLEU's own paired bootstrap resampling ({bootstrap} resamples, "
             "`sacrebleu.significance.PairedTest`, as `sacrebleu --paired-bs`), per seed "
             "and test set: p is the probability of a difference at least as large under "
             "the null hypothesis that the systems are equal (p < 0.05: significant at "
             f"5%). Signature: `{sig[0]['signature']}`.", "",
             "| system vs baseline | seed | test set | baseline | system | Δ | p |",
             "|---|---|---|---|---|---|---|"]
    for row in sig:
        lines.append(f"| {row['system']} vs {row['baseline']} | {row['seed']} | "
                     f"{row['test_set']} | {row['baseline_bleu']:.2f} | "
                     f"{row['system_bleu']:.2f} | {row['delta']:+.2f} | "
                     f"{row['p_value']:.4f} |")
    return lines + [""]


def _flatness_section(summary: Dict[str, dict], first: str) -> List[str]:
    if not any(row["flatness"] for row in summary.values()):
        return []
    lines = ["## Flatness", "", "From `eval/sharpness.json` (xsam-flatness on "
             "training batches, the scored checkpoint): λ_max of the Hessian, λ_max/λ_5 and "
             "the average sharpness over random filter-normalised directions; mean ± sample "
             "std over seeds.", "",
             f"| optimizer | sacreBLEU {first} | " + " | ".join(FLATNESS_KEYS) + " |",
             "|---|---|" + "---|" * len(FLATNESS_KEYS)]
    for lab, row in summary.items():
        if row["flatness"]:
            cells = [fmt(*row["flatness"][k][:2], digits=FLATNESS_DIGITS[k])
                     for k in FLATNESS_KEYS]
            lines.append(f"| {lab} | {fmt(*row['sacrebleu'][:2])} | " + " | ".join(cells)
                         + " |")
    return lines + [""]


COST_NOTE = ("Wall-clock of the training (every fairseq process that wrote "
             "the run's train.log, from its first to its last line; minutes; it includes "
             "validation and any time the machine was paused or shared) and updates per "
             "second of training (per run the median over epochs of the epoch's updates "
             "over its `train_wall`, so that an epoch in which the machine stalled does not "
             "count), mean ± sample std over runs, on the machine that ran them; a run "
             "finished with another number of threads per process than the rest of its "
             "optimizer's, or on another day (every session runs on a machine of its own, "
             "and their speeds differ), has a row of its own. Time per update / adamw "
             "divides by the AdamW speed of the same day ('–' where no AdamW run finished "
             "that day).")


def _cost_section(groups: Dict[str, List[dict]]) -> List[str]:
    cost = cost_rows(groups)
    if not any(c.runs for c in cost):
        return []
    # the AdamW speed of each day (its first row of that day: the plain one if there is one)
    base: Dict[Optional[str], float] = {}
    for c in cost_rows({"adamw": groups.get("adamw", [])}):
        if c.updates_per_s:
            base.setdefault(c.day, statistics.mean(c.updates_per_s))
    lines = ["## Cost", "", COST_NOTE, "",
             "| optimizer | runs | wall-clock (min) | updates | updates/s | time per update "
             "/ adamw |", "|---|---|---|---|---|---|"]
    for c in cost:
        ups = c.updates_per_s
        rel = f"{base[c.day] / statistics.mean(ups):.2f}" if c.day in base and ups else "–"
        lines.append(f"| {c.label} | {c.runs} | {fmt(*mean_std(c.wall_min)[:2], digits=1)} | "
                     f"{', '.join(map(str, c.updates)) or '–'} | "
                     f"{fmt(*mean_std(ups)[:2], digits=2)} | {rel} |")
    return lines + [""]


def _alpha_section(runs: List[dict]) -> List[str]:
    alpha_runs = [r for r in runs if r["alpha"]]
    if not alpha_runs:
        return []
    pinned = sum(1 for r in alpha_runs for x in r["alpha_pinned"] if x)
    total = sum(len(r["alpha"]) for r in alpha_runs)
    lines = ["## α searches (XSAM)", "",
             f"α chosen at each search (the first update of every epoch); * = pinned at the "
             f"edge of the grid (the largest probe loss is the last probe, so the search "
             f"would have gone further): {pinned} of {total} searches.", ""]
    for r in alpha_runs:
        lines.append(f"- {r['name']}: " + ", ".join(
            f"{u}: {a:.2f}{'*' if pin else ''}"
            for (u, a), pin in zip(r["alpha"], r["alpha_pinned"])))
    return lines + [""]


def _sweep_section(sweep: Optional[List[dict]]) -> List[str]:
    if not sweep:
        return []
    lines = ["## ρ sweep (validation)", "", "One seed per run; ρ' = 3ρ; the value chosen "
             "per optimizer is the one with the lowest best validation loss.", "",
             "| run | ρ | best valid loss | at epoch | epochs | updates |",
             "|---|---|---|---|---|---|"]
    for row in sorted(sweep_rows(sweep), key=lambda x: (x["label"].split("-")[0],
                                                        x["rho"] or 0)):
        lines.append(f"| {row['run']} | {row['rho']} | {row['best_loss']} | "
                     f"{row['best_epoch']} | {row['epochs']} | {row['updates']} |")
    return lines + [""]


def _runs_section(runs: List[dict], names: List[str],
                  rescored: Optional[List[dict]]) -> List[str]:
    lines = ["## Runs", "", "| run | " + " | ".join(f"{n} sacreBLEU / tok. BLEU / sentences"
                                                   for n in names)
             + " | best valid loss | updates |", "|---|" + "---|" * (len(names) + 2)]
    for r in runs:
        cells = [(f"{r['scores'][n]['sacrebleu']} / {r['scores'][n]['tokenized_bleu']} / "
                  f"{r['scores'][n]['hypotheses']}") if n in r["scores"] else "–" for n in names]
        losses = [v["loss"] for v in r["valid"].values() if "loss" in v]
        lines.append(f"| {r['name']} | " + " | ".join(cells) +
                     f" | {min(losses) if losses else '–'} | {r['updates'] or '–'} |")
    lines += _missing(runs, lambda r: not r["scores"])
    if rescored is not None:
        bad = [x for x in rescored if not x["equal"]]
        lines += ["", f"Rescored: {len(rescored)} hypothesis files against the raw references "
                  f"({len(rescored) - len(bad)} equal to bleu.json"
                  + (f"; DIFFERENT: {', '.join(x['run'] + '/' + x['test_set'] for x in bad)}"
                     if bad else "") + ")."]
    return lines


def _missing(runs: List[dict], unscored) -> List[str]:
    missing = [r["name"] for r in runs if unscored(r)]
    return ["", "Not evaluated (no eval/bleu.json), left out of the tables above: "
            + ", ".join(missing)] if missing else []
