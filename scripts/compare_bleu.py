#!/usr/bin/env python3
"""Compare optimizers over IWSLT'14 runs: BLEU mean ± std per optimizer, deltas, plots.

Inputs: run directories written by the recipes' ``train.sh`` and ``evaluate.sh``
(``recipes/iwslt14_de_en``, ``recipes/multi30k_de_en``), named ``<OPT>-seed<SEED>`` (the label is
the part before "-seed"); each holds ``command.txt``, ``train.log`` (fairseq's log, simple or
hydra format), ``eval/bleu.json`` and optionally ``eval/sharpness.json`` (keys lambda_max,
lambda_ratio, avg_sharpness; scripts/sharpness.py) and ``timing.json`` (wall-clock, updates/s).
``eval/bleu.json`` holds one test set's scores (IWSLT14, the demo) or maps each test set to its
scores (Multi30k: {TESTSET: {sacrebleu, signature, tokenized_bleu, hypotheses, references,
hypothesis_file, reference_file}}).

Outputs in ``--out DIR``:
- ``report.md``: per optimizer n, tokenized BLEU and sacreBLEU mean ± sample std, the deltas to
  adamw and to sam, updates, flatness (when present); per run values; sacreBLEU signatures;
  the alpha searches of XSAM runs; the exact commands.
- ``valid_loss.png`` (validation loss per epoch, mean over seeds), ``bleu.png`` (bars = means,
  points = seeds), ``alpha.png`` (alpha at each search of the XSAM runs, a line per run; searches
  pinned at the edge of the grid, whose loss maximum is the last probe, marked; only if there
  are any).
- with several test sets, also: a column per test set (mean ± sample std over seeds, n); the
  paired bootstrap test of sacreBLEU (``sacrebleu.significance.PairedTest``, the implementation
  of ``sacrebleu --paired-bs``) of xsam vs sam, xsam vs adamw and each XSAM variant (a label
  ``xsam_<name>``) vs xsam, per seed and test set; the cost
  (wall-clock, updates/s) per optimizer; ``--sweep RUN...``: the ρ sweep (best validation loss
  per run).

``--rescore`` recomputes sacreBLEU from every run's ``eval/<TESTSET>.hyp.en`` and the raw
references (``--refs``, default the repository's ``data/multi30k``) and fails unless it equals
``eval/bleu.json``.

A run without ``eval/bleu.json`` is an error naming the evaluate.sh command to run, unless
``--allow-missing`` (then it is listed in the report and left out of the BLEU tables).

Example::

    python scripts/compare_bleu.py runs/iwslt14_de_en/*-seed* --out docs/results/iwslt14
    python scripts/compare_bleu.py docs/results/multi30k/runs/*-seed* --rescore \
        --sweep docs/results/multi30k/runs/sweep/*-seed* --out docs/results/multi30k
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
import common  # noqa: E402  (recipes/common.py: the recipes' run layout and log parsing)

sys.path.pop(0)

ORDER = ("adamw", "sam", "xsam", "fixed", "msam", "msam+", "lsam", "lsam+")
VALID_RE = re.compile(r"epoch (\d+) \| valid on '([^']+)' subset \| (.*)$")
ALPHA_RE = re.compile(r"XSAM alpha search at update (\d+): alpha=([-+0-9.eE]+)"
                      r"(?: \(probe losses ([^)]*)\))?(.*)$")
#: since issue 14 a search's log line ends in this note when α* is on the edge (decided at full
#: precision), and the log has the metric xsam_alpha_at_edge; older logs only have the losses
EDGE_NOTE = " [at the grid's edge"
UPDATES_RE = re.compile(r"num_updates[ =](\d+)")
FLATNESS_KEYS = ("lambda_max", "lambda_ratio", "avg_sharpness")
FLATNESS_DIGITS = {"lambda_max": 2, "lambda_ratio": 3, "avg_sharpness": 4}


_fields = common.log_fields


def parse_train_log(text: str) -> dict:
    """Validation metrics per epoch (subset 'valid'), alpha searches, whether each search was
    pinned at the edge of its grid (None without the probe losses) and the last update count."""
    valid: Dict[int, Dict[str, float]] = {}
    searches: Dict[int, tuple] = {}  # by update: a search repeated after a resume counts once
    updates = None
    noted = "xsam_alpha_at_edge" in text  # the edge is in the log lines themselves
    for line in text.splitlines():
        m = VALID_RE.search(line)
        if m and m.group(2) == "valid":
            valid[int(m.group(1))] = _fields(m.group(3))
        m = ALPHA_RE.search(line)
        if m:
            if noted:
                pinned = EDGE_NOTE in m.group(4)
            else:  # recomputed from the printed (rounded) losses
                pinned = (edge_pinned([float(x) for x in m.group(3).split()])
                          if m.group(3) else None)
            searches[int(m.group(1))] = (float(m.group(2)), pinned)
        for m in UPDATES_RE.finditer(line):
            updates = int(m.group(1))
    alpha = [(u, a) for u, (a, _) in sorted(searches.items())]
    pinned = [p for _, (_, p) in sorted(searches.items())]
    return {"valid": valid, "alpha": alpha, "alpha_pinned": pinned, "updates": updates}


def edge_pinned(probes: List[float]) -> bool:
    """Whether the largest finite probe loss is the last probe (probes are in alpha order): the
    search would have gone further than its grid allows. Ties go to the first maximum."""
    finite = [(x, i) for i, x in enumerate(probes) if x == x and abs(x) != float("inf")]
    if not finite:
        return False
    best = max(x for x, _ in finite)
    return next(i for x, i in finite if x == best) == len(probes) - 1


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
    info["scores"] = test_set_scores(info["bleu"])
    info["multi"] = bool(info["bleu"]) and "sacrebleu" not in info["bleu"]
    timing = run / "timing.json"
    info["timing"] = json.loads(timing.read_text()) if timing.is_file() else None
    # the cost from the log itself (the same for every run, whenever its timing.json was written):
    # updates/s = the median over epochs (an epoch in which the machine stalled does not count),
    # wall-clock = every fairseq process that wrote the log, killed ones too
    found = common.log_timing(log.read_text(encoding="utf-8", errors="replace"))
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

    labels = list(groups)
    if any(r["multi"] for runs in groups.values() for r in runs):
        written.append(save("bleu.png", bleu_by_test_set(plt, groups)))
    else:
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
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
        marked = False
        for r in xsam_runs:
            line, = ax.plot([u for u, _ in r["alpha"]], [a for _, a in r["alpha"]], marker=".",
                            label=r["name"])
            edge = [x for x, pin in zip(r["alpha"], r["alpha_pinned"]) if pin]
            if edge:
                ax.scatter([u for u, _ in edge], [a for _, a in edge], marker="x", s=60,
                           color=line.get_color(), zorder=3,
                           label=None if marked else "pinned at the grid's edge")
                marked = True
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
           scoring: str = SCORING, **multi) -> str:
    if any(r["multi"] for r in runs):
        return report_multi(runs, out, title, note, **multi)
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


# ----------------------------------------------------------------------------- several test sets

MULTI_SCORING = ("sacreBLEU scores the detokenized (SentencePiece-decoded) hypotheses against the "
                 "raw, cased references (signature below); tokenized BLEU is fairseq-generate's "
                 "`BLEU4` on the same output: the SentencePiece-decoded text split at spaces, "
                 "cased (this pipeline has no Moses tokenizer, so punctuation stays attached to "
                 "words: not comparable to the Moses-tokenized BLEU of IWSLT14 papers). Beam 5, "
                 "every sentence of every test set translated (checked).")
PAIRS = (("xsam", "sam"), ("xsam", "adamw"))


def pairs(labels) -> List[tuple]:
    """PAIRS, then each variant of XSAM (a label ``xsam_<name>``, e.g. issue 14's ``xsam_auto``)
    and the fixed-α baseline (``fixed`` or ``fixed_<name>``: XSAM's direction without the
    search) against default XSAM."""
    variants = sorted(lab for lab in labels if lab.startswith("xsam_")) + sorted(
        lab for lab in labels if lab == "fixed" or lab.startswith("fixed_"))
    return list(PAIRS) + [(lab, "xsam") for lab in variants]


def test_sets(runs: List[dict]) -> List[str]:
    names: List[str] = []
    for r in runs:
        names += [t for t in r["scores"] if t not in names]
    return names


def bleu_by_test_set(plt, groups: Dict[str, List[dict]]):
    """sacreBLEU per test set: bars = mean over seeds, points = seeds."""
    names = test_sets([r for runs in groups.values() for r in runs])
    labels = list(groups)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1, 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        pts = {lab: [float(r["scores"][name]["sacrebleu"]) for r in groups[lab]
                     if name in r["scores"]] for lab in labels}
        means = [statistics.mean(v) if v else 0.0 for v in pts.values()]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in pts.values()]
        ax.bar(range(len(labels)), means, yerr=stds, color="#9ecae1", capsize=4)
        for i, v in enumerate(pts.values()):
            ax.scatter([i] * len(v), v, color="black", zorder=3, s=14)
        values = [x for v in pts.values() for x in v]
        if values:  # zoomed: the differences are a fraction of a point
            ax.set_ylim(min(values) - 1.0, max(values) + 0.5)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30)
        ax.set_title(f"{name} (y zoomed)", fontsize=9)
        ax.set_ylabel("sacreBLEU")
    return fig


def read_references(score: dict, refs_dir: Optional[Path]) -> List[str]:
    """The raw references a bleu.json entry was scored against: its reference_file (relative to
    the repository, or its name in refs_dir), the first ``references`` lines."""
    name = Path(score["reference_file"]).name
    path = refs_dir / name if refs_dir else ROOT / score["reference_file"]
    if not path.is_file():
        raise SystemExit(f"--refs: {path} not found (the references of {name})")
    if path.suffix == ".gz":
        import gzip

        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = read_lines(f.read())
    else:
        lines = read_lines(path.read_text(encoding="utf-8"))
    return lines[:int(score["references"])]


def read_lines(text: str) -> List[str]:
    """The lines of a file written one sentence per line, each ending in a newline (an empty
    translation is an empty line, also the last one)."""
    return (text[:-1] if text.endswith("\n") else text).split("\n") if text else []


def read_hypotheses(run: dict, name: str) -> List[str]:
    path = run["run"] / "eval" / run["scores"][name].get("hypothesis_file", f"{name}.hyp.en")
    if not path.is_file():
        raise SystemExit(f"{run['run']}: {path.name} is missing (the hypotheses of {name})")
    hyps = read_lines(path.read_text(encoding="utf-8"))
    expected = run["scores"][name].get("hypotheses")
    if expected is not None and len(hyps) != int(expected):
        raise SystemExit(f"{run['run']}: {path.name} has {len(hyps)} lines, bleu.json says "
                         f"{expected} hypotheses")
    return hyps


def significance(runs: List[dict], refs_dir: Optional[Path], samples: int = 1000) -> List[dict]:
    """sacreBLEU's paired bootstrap (``PairedTest(test_type="bs")``, what ``sacrebleu
    --paired-bs`` runs; seed SACREBLEU_SEED, default 12345) of each pair of ``pairs``, per seed
    both optimizers have and per test set."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    by = {(r["label"], r["seed"]): r for r in runs if r["scores"]}
    rows = []
    for system, baseline in pairs({lab for lab, _ in by}):
        seeds = sorted({s for (lab, s) in by if lab == system} & {s for (lab, s) in by
                                                                  if lab == baseline}, key=int)
        for seed in seeds:
            a, b = by[(baseline, seed)], by[(system, seed)]
            for name in test_sets([a, b]):
                if name not in a["scores"] or name not in b["scores"]:
                    continue
                refs = read_references(b["scores"][name], refs_dir)
                base_hyps, sys_hyps = read_hypotheses(a, name), read_hypotheses(b, name)
                if not len(base_hyps) == len(sys_hyps) == len(refs):  # sacreBLEU would zip
                    raise SystemExit(f"{name}: {len(base_hyps)} hypotheses of {a['name']}, "
                                     f"{len(sys_hyps)} of {b['name']}, {len(refs)} references")
                signatures, scores = PairedTest(
                    [(baseline, base_hyps), (system, sys_hyps)],
                    {"BLEU": BLEU(references=[refs])}, references=None, test_type="bs",
                    n_samples=samples)()
                base, sys_ = scores["BLEU"]
                rows.append({"system": system, "baseline": baseline, "seed": seed,
                             "test_set": name, "baseline_bleu": base.score,
                             "system_bleu": sys_.score, "delta": sys_.score - base.score,
                             "p_value": sys_.p_value, "baseline_ci": base.ci,
                             "system_ci": sys_.ci, "signature": str(signatures["BLEU"])})
    return rows


def rescore(runs: List[dict], refs_dir: Optional[Path]) -> List[dict]:
    """sacreBLEU of every committed hypothesis file against the raw references, beside the
    score in bleu.json (equal when they agree to the 2 decimals bleu.json keeps)."""
    from sacrebleu.metrics import BLEU

    rows = []
    for r in runs:
        for name, score in r["scores"].items():
            if "reference_file" not in score:
                continue
            hyps, refs = read_hypotheses(r, name), read_references(score, refs_dir)
            if len(hyps) != len(refs):
                raise SystemExit(f"{r['run']}: {name}: {len(hyps)} hypotheses for "
                                 f"{len(refs)} references")
            again = BLEU().corpus_score(hyps, [refs]).score
            rows.append({"run": r["name"], "test_set": name, "bleu_json": score["sacrebleu"],
                         "rescored": round(again, 2), "sentences": len(hyps),
                         "equal": round(again, 2) == score["sacrebleu"]})
    return rows


def rho_of(command: Optional[str]) -> Optional[float]:
    words = (command or "").split()
    return float(words[words.index("--rho") + 1]) if "--rho" in words else None


def sweep_rows(sweep: List[dict]) -> List[dict]:
    """The ρ sweep: per run, ρ (from command.txt) and the best validation loss and its epoch."""
    rows = []
    for r in sweep:
        losses = {e: v["loss"] for e, v in r["valid"].items() if "loss" in v}
        best = min(losses, key=lambda e: (losses[e], e)) if losses else None
        rows.append({"run": r["name"], "label": r["label"], "rho": rho_of(r["command"]),
                     "best_loss": losses.get(best), "best_epoch": best,
                     "epochs": max(losses) if losses else None, "updates": r["updates"]})
    return rows


def cost_rows(groups: Dict[str, List[dict]]) -> List[tuple]:
    """(label, runs, wall-clock minutes, updates/s, updates, day) per optimizer. Speeds measured
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
            rows.append((name, len(t), wall, ups, updates, day))
        if not by_key:
            rows.append((lab, 0, [], [], [], None))
    return rows


def report_multi(runs: List[dict], out: Path, title: str, note: Optional[str],
                 sweep: Optional[List[dict]] = None, refs_dir: Optional[Path] = None,
                 rescored: Optional[List[dict]] = None, bootstrap: int = 1000) -> str:
    groups = group(runs)
    summary = summarise(groups)
    images = plots(groups, summary, out, title)
    names = test_sets(runs)
    seeds = {lab: len([r for r in rs if r["scores"]]) for lab, rs in groups.items()}
    lines = [f"# {title}", ""]
    if note:
        lines += [f"> {note}", ""]
    lines += [f"Runs: {len(runs)} ({', '.join(f'{lab}: {n} seed(s)' for lab, n in seeds.items())})."
              f" {MULTI_SCORING} Mean ± sample standard deviation over seeds (n seeds).", ""]
    for key, what in (("sacrebleu", "sacreBLEU"), ("tokenized_bleu", "tokenized BLEU (fairseq)")):
        lines += [f"## {what}", "", "| optimizer | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for lab, rs in groups.items():
            cells = [fmt_n([float(r["scores"][n][key]) for r in rs if n in r["scores"]])
                     for n in names]
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
        lines.append("")
    sig = significance(runs, refs_dir, bootstrap)
    if sig:
        lines += ["## Paired bootstrap test (sacreBLEU)", "",
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
        lines.append("")
    if any(row["flatness"] for row in summary.values()):
        lines += ["## Flatness", "", "From `eval/sharpness.json` (scripts/sharpness.py on "
                  "training batches, the scored checkpoint): λ_max of the Hessian, λ_max/λ_5 and "
                  "the average sharpness over random filter-normalised directions; mean ± sample "
                  "std over seeds.", "",
                  f"| optimizer | sacreBLEU {names[0]} | " + " | ".join(FLATNESS_KEYS) + " |",
                  "|---|---|" + "---|" * len(FLATNESS_KEYS)]
        for lab, row in summary.items():
            if row["flatness"]:
                cells = [fmt(*row["flatness"][k][:2], digits=FLATNESS_DIGITS[k])
                         for k in FLATNESS_KEYS]
                lines.append(f"| {lab} | {fmt(*row['sacrebleu'][:2])} | " + " | ".join(cells)
                             + " |")
        lines.append("")
    cost = cost_rows(groups)
    if any(c[1] for c in cost):
        # the AdamW speed of each day (its first row of that day: the plain one if there is one)
        base: Dict[Optional[str], float] = {}
        for c in cost_rows({"adamw": groups.get("adamw", [])}):
            if c[3]:
                base.setdefault(c[5], statistics.mean(c[3]))
        lines += ["## Cost", "", "Wall-clock of the training (every fairseq process that wrote "
                  "the run's train.log, from its first to its last line; minutes; it includes "
                  "validation and any time the machine was paused or shared) and updates per "
                  "second of training (per run the median over epochs of the epoch's updates "
                  "over its `train_wall`, so that an epoch in which the machine stalled does not "
                  "count), mean ± sample std over runs, on the machine that ran them; a run "
                  "finished with another number of threads per process than the rest of its "
                  "optimizer's, or on another day (every session runs on a machine of its own, "
                  "and their speeds differ), has a row of its own. Time per update / adamw "
                  "divides by the AdamW speed of the same day ('–' where no AdamW run finished "
                  "that day).", "",
                  "| optimizer | runs | wall-clock (min) | updates | updates/s | time per update "
                  "/ adamw |", "|---|---|---|---|---|---|"]
        for lab, n, wall, ups, updates, day in cost:
            rel = f"{base[day] / statistics.mean(ups):.2f}" if day in base and ups else "–"
            lines.append(f"| {lab} | {n} | {fmt(*mean_std(wall)[:2], digits=1)} | "
                         f"{', '.join(map(str, updates)) or '–'} | "
                         f"{fmt(*mean_std(ups)[:2], digits=2)} | {rel} |")
        lines.append("")
    alpha_runs = [r for r in runs if r["alpha"]]
    if alpha_runs:
        pinned = sum(1 for r in alpha_runs for x in r["alpha_pinned"] if x)
        total = sum(len(r["alpha"]) for r in alpha_runs)
        lines += ["## α searches (XSAM)", "",
                  f"α chosen at each search (the first update of every epoch); * = pinned at the "
                  f"edge of the grid (the largest probe loss is the last probe, so the search "
                  f"would have gone further): {pinned} of {total} searches.", ""]
        for r in alpha_runs:
            lines.append(f"- {r['name']}: " + ", ".join(
                f"{u}: {a:.2f}{'*' if pin else ''}"
                for (u, a), pin in zip(r["alpha"], r["alpha_pinned"])))
        lines.append("")
    if sweep:
        lines += ["## ρ sweep (validation)", "", "One seed per run; ρ' = 3ρ; the value chosen "
                  "per optimizer is the one with the lowest best validation loss.", "",
                  "| run | ρ | best valid loss | at epoch | epochs | updates |",
                  "|---|---|---|---|---|---|"]
        for row in sorted(sweep_rows(sweep), key=lambda x: (x["label"].split("-")[0],
                                                            x["rho"] or 0)):
            lines.append(f"| {row['run']} | {row['rho']} | {row['best_loss']} | "
                         f"{row['best_epoch']} | {row['epochs']} | {row['updates']} |")
        lines.append("")
    lines += ["## Runs", "", "| run | " + " | ".join(f"{n} sacreBLEU / tok. BLEU / sentences"
                                                    for n in names)
              + " | best valid loss | updates |", "|---|" + "---|" * (len(names) + 2)]
    missing = []
    for r in runs:
        if not r["scores"]:
            missing.append(r["name"])
        cells = [(f"{r['scores'][n]['sacrebleu']} / {r['scores'][n]['tokenized_bleu']} / "
                  f"{r['scores'][n]['hypotheses']}") if n in r["scores"] else "–" for n in names]
        losses = [v["loss"] for v in r["valid"].values() if "loss" in v]
        lines.append(f"| {r['name']} | " + " | ".join(cells) +
                     f" | {min(losses) if losses else '–'} | {r['updates'] or '–'} |")
    if missing:
        lines += ["", "Not evaluated (no eval/bleu.json), left out of the tables above: "
                  + ", ".join(missing)]
    if rescored is not None:
        bad = [x for x in rescored if not x["equal"]]
        lines += ["", f"Rescored: {len(rescored)} hypothesis files against the raw references "
                  f"({len(rescored) - len(bad)} equal to bleu.json"
                  + (f"; DIFFERENT: {', '.join(x['run'] + '/' + x['test_set'] for x in bad)}"
                     if bad else "") + ")."]
    sigs = sorted({s["signature"] for r in runs for s in r["scores"].values()})
    lines += ["", "## sacreBLEU signature", ""] + [f"- `{x}`" for x in sigs]
    lines += ["", "## Plots", ""] + [f"![{i}]({i})" for i in images]
    lines += ["", "## Commands", ""]
    for r in runs:
        lines += [f"{r['name']}:", "", "```", r["command"] or "(no command.txt)", "```", ""]
    text = "\n".join(lines).rstrip() + "\n"
    (out / "report.md").write_text(text, encoding="utf-8")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories <OPT>-seed<SEED>")
    p.add_argument("--out", type=Path, help="output folder (report.md, PNGs); required unless "
                   "--rescore alone")
    p.add_argument("--title", default="IWSLT'14 De-En: BLEU by optimizer")
    p.add_argument("--note", help="a note printed under the title")
    p.add_argument("--allow-missing", action="store_true",
                   help="list runs without eval/bleu.json instead of failing")
    p.add_argument("--sweep", nargs="+", type=Path, default=[], metavar="RUN",
                   help="runs of the rho sweep: a table of rho and best validation loss")
    p.add_argument("--refs", type=Path, help="folder of the raw references named in bleu.json "
                   "(default: the repository's files, e.g. data/multi30k/*.en.gz)")
    p.add_argument("--rescore", action="store_true", help="recompute sacreBLEU of every "
                   "eval/<TESTSET>.hyp.en and fail unless it equals eval/bleu.json")
    p.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples "
                   "(default 1000, sacreBLEU's)")
    args = p.parse_args(argv)
    if args.out is None and not args.rescore:
        p.error("the following arguments are required: --out (or --rescore)")
    if args.bootstrap < 1:
        p.error(f"argument --bootstrap: {args.bootstrap} (allowed: an integer >= 1)")
    for run in [*args.runs, *args.sweep]:
        if not run.is_dir():
            p.error(f"argument runs: {run} is not a directory")
    runs = [load_run(r, args.allow_missing) for r in args.runs]
    rescored = None
    if args.rescore:
        rescored = rescore(runs, args.refs)
        for x in rescored:
            print(f"rescore {x['run']} {x['test_set']}: bleu.json {x['bleu_json']}, rescored "
                  f"{x['rescored']} ({x['sentences']} sentences) "
                  f"{'ok' if x['equal'] else 'DIFFERENT'}")
        bad = [x for x in rescored if not x["equal"]]
        if bad or not rescored:
            raise SystemExit(f"compare_bleu: --rescore: {len(bad)} of {len(rescored)} "
                             "hypothesis files do not reproduce bleu.json" if rescored else
                             "compare_bleu: --rescore: no hypothesis files with references "
                             "named in bleu.json")
    if args.out is None:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    sweep = [load_run(r, True) for r in args.sweep]
    report(runs, args.out, args.title, args.note, sweep=sweep, refs_dir=args.refs,
           rescored=rescored, bootstrap=args.bootstrap)
    print(f"compare_bleu: wrote {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
