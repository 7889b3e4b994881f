#!/usr/bin/env python3
"""Compare optimizers over IWSLT'14 runs: BLEU mean ± std per optimizer, deltas, plots.

Inputs: run directories written by ``recipes/iwslt14_de_en/train.sh`` and ``evaluate.sh``,
named ``<OPT>-seed<SEED>`` (the label is the part before "-seed"); each holds ``command.txt``,
``train.log`` (fairseq's log, simple or hydra format), ``eval/bleu.json`` and optionally
``eval/sharpness.json`` (keys lambda_max, lambda_ratio, avg_sharpness; scripts/sharpness.py).

Outputs in ``--out DIR``:
- ``report.md``: per optimizer n, tokenized BLEU and sacreBLEU mean ± sample std, the deltas to
  adamw and to sam, updates, flatness (when present); per run values; sacreBLEU signatures;
  the alpha searches of XSAM runs; the exact commands.
- ``valid_loss.png`` (validation loss per epoch, mean over seeds), ``bleu.png`` (bars = means,
  points = seeds), ``alpha.png`` (alpha at each search of the XSAM runs; only if there are any).

A run without ``eval/bleu.json`` is an error naming the evaluate.sh command to run, unless
``--allow-missing`` (then it is listed in the report and left out of the BLEU tables).

Example::

    python scripts/compare_bleu.py runs/iwslt14_de_en/*-seed* --out docs/results/iwslt14
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

ORDER = ("adamw", "sam", "xsam", "fixed", "msam", "msam+", "lsam", "lsam+")
VALID_RE = re.compile(r"epoch (\d+) \| valid on '([^']+)' subset \| (.*)$")
ALPHA_RE = re.compile(r"XSAM alpha search at update (\d+): alpha=([-+0-9.eE]+)")
UPDATES_RE = re.compile(r"num_updates[ =](\d+)")
FLATNESS_KEYS = ("lambda_max", "lambda_ratio", "avg_sharpness")
FLATNESS_DIGITS = {"lambda_max": 2, "lambda_ratio": 3, "avg_sharpness": 4}


def _fields(text: str) -> Dict[str, float]:
    out = {}
    for part in text.split(" | "):
        key, _, value = part.strip().partition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


def parse_train_log(text: str) -> dict:
    """Validation metrics per epoch (subset 'valid'), alpha searches and the last update count."""
    valid: Dict[int, Dict[str, float]] = {}
    alpha: List[tuple] = []
    updates = None
    for line in text.splitlines():
        m = VALID_RE.search(line)
        if m and m.group(2) == "valid":
            valid[int(m.group(1))] = _fields(m.group(3))
        m = ALPHA_RE.search(line)
        if m:
            alpha.append((int(m.group(1)), float(m.group(2))))
        for m in UPDATES_RE.finditer(line):
            updates = int(m.group(1))
    return {"valid": valid, "alpha": alpha, "updates": updates}


def label_and_seed(run: Path):
    name = run.name
    if "-seed" not in name:
        raise SystemExit(f"{run}: a run directory must be named <OPT>-seed<SEED> "
                         "(as train.sh names it)")
    label, _, seed = name.partition("-seed")
    return label, seed


def load_run(run: Path, allow_missing: bool) -> dict:
    label, seed = label_and_seed(run)
    log = run / "train.log"
    if not log.is_file():
        raise SystemExit(f"{run}: no train.log (not a train.sh run directory)")
    info = {"run": run, "name": run.name, "label": label, "seed": seed,
            **parse_train_log(log.read_text(encoding="utf-8", errors="replace"))}
    cmd = run / "command.txt"
    info["command"] = cmd.read_text().strip() if cmd.is_file() else None
    bleu = run / "eval" / "bleu.json"
    if bleu.is_file():
        info["bleu"] = json.loads(bleu.read_text())
    elif allow_missing:
        info["bleu"] = None
    else:
        raise SystemExit(f"{run}: no eval/bleu.json: evaluate it first "
                         f"(recipes/iwslt14_de_en/evaluate.sh {run}) or pass --allow-missing")
    sharp = run / "eval" / "sharpness.json"
    info["sharpness"] = json.loads(sharp.read_text()) if sharp.is_file() else None
    return info


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
        for key in ("tokenized_bleu", "sacrebleu"):
            row[key] = mean_std([float(r["bleu"][key]) for r in scored])
        row["updates"] = sorted({r["updates"] for r in runs if r["updates"] is not None})
        flat = [r["sharpness"] for r in runs if r["sharpness"]]
        row["flatness"] = {k: mean_std([float(f[k]) for f in flat if k in f])
                           for k in FLATNESS_KEYS} if flat else None
        out[lab] = row
    return out


def _delta(summary, lab, base, key) -> str:
    if base not in summary or lab == base:
        return "–"
    a, b = summary[lab][key][0], summary[base][key][0]
    return "–" if a is None or b is None else f"{a - b:+.2f}"


def plots(groups: Dict[str, List[dict]], summary: Dict[str, dict], out: Path,
          title: str = "") -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(name, fig):
        fig.suptitle(title, fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        return name

    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for lab, runs in groups.items():
        epochs = sorted({e for r in runs for e in r["valid"]})
        means = [statistics.mean([r["valid"][e]["loss"] for r in runs
                                  if e in r["valid"] and "loss" in r["valid"][e]])
                 for e in epochs]
        if epochs:
            ax.plot(epochs, means, marker="o", label=f"{lab} (n={len(runs)})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (mean over seeds)")
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(save("valid_loss.png", fig))

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    labels = list(groups)
    for ax, key, name in zip(axes, ("tokenized_bleu", "sacrebleu"),
                              ("tokenized BLEU (fairseq)", "sacreBLEU")):
        means = [summary[lab][key][0] or 0.0 for lab in labels]
        stds = [summary[lab][key][1] or 0.0 for lab in labels]
        ax.bar(range(len(labels)), means, yerr=stds, color="#9ecae1", capsize=4)
        for i, lab in enumerate(labels):
            pts = [float(r["bleu"][key]) for r in groups[lab] if r["bleu"]]
            ax.scatter([i] * len(pts), pts, color="black", zorder=3, s=14)
        values = [float(r["bleu"][key]) for runs in groups.values() for r in runs if r["bleu"]]
        if values:  # zoomed: BLEU differences are a fraction of a point
            ax.set_ylim(min(values) - 1.0, max(values) + 0.5)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels)
        ax.set_title(name + " (y axis zoomed)")
        ax.set_ylabel("BLEU")
    written.append(save("bleu.png", fig))

    xsam_runs = [r for runs in groups.values() for r in runs if r["alpha"]]
    if xsam_runs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in xsam_runs:
            ax.plot([u for u, _ in r["alpha"]], [a for _, a in r["alpha"]], marker=".",
                    label=r["name"])
        ax.set_xlabel("update")
        ax.set_ylabel("alpha chosen by the search")
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(save("alpha.png", fig))
    return written


SCORING = ("Tokenized BLEU is fairseq-generate's `BLEU4` (beam 5, `--remove-bpe`, the whole "
           "test set), the number fairseq and the paper report; sacreBLEU scores the "
           "Moses-detokenized output (signature below).")


def report(runs: List[dict], out: Path, title: str, note: Optional[str],
           scoring: str = SCORING) -> str:
    groups = group(runs)
    summary = summarise(groups)
    images = plots(groups, summary, out, title)
    lines = [f"# {title}", ""]
    if note:
        lines += [f"> {note}", ""]
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
                  "From `eval/sharpness.json` (scripts/sharpness.py); mean ± sample std.", "",
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
    missing = []
    for r in runs:
        last = r["valid"][max(r["valid"])].get("loss") if r["valid"] else None
        b = r["bleu"]
        if b is None:
            missing.append(r["name"])
        lines.append(
            f"| {r['name']} | {b['tokenized_bleu'] if b else '–'} | "
            f"{b['sacrebleu'] if b else '–'} | {b['hypotheses'] if b else '–'} | "
            f"{r['updates'] if r['updates'] is not None else '–'} | "
            f"{last if last is not None else '–'} | {b['checkpoint'] if b else '–'} |")
    if missing:
        lines += ["", "Not evaluated (no eval/bleu.json), left out of the tables above: "
                  + ", ".join(missing)]
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
    lines += ["", "## Plots", ""] + [f"![{i}]({i})" for i in images]
    lines += ["", "## Commands", ""]
    for r in runs:
        lines += [f"{r['name']}:", "", "```", r["command"] or "(no command.txt)", "```", ""]
        if r["bleu"]:
            lines += ["```", r["bleu"]["command"], "```", ""]
    text = "\n".join(lines).rstrip() + "\n"
    (out / "report.md").write_text(text, encoding="utf-8")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories <OPT>-seed<SEED>")
    p.add_argument("--out", required=True, type=Path, help="output folder (report.md, PNGs)")
    p.add_argument("--title", default="IWSLT'14 De-En: BLEU by optimizer")
    p.add_argument("--note", help="a note printed under the title")
    p.add_argument("--allow-missing", action="store_true",
                   help="list runs without eval/bleu.json instead of failing")
    args = p.parse_args(argv)
    for run in args.runs:
        if not run.is_dir():
            p.error(f"argument runs: {run} is not a directory")
    runs = [load_run(r, args.allow_missing) for r in args.runs]
    args.out.mkdir(parents=True, exist_ok=True)
    report(runs, args.out, args.title, args.note)
    print(f"compare_bleu: wrote {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
