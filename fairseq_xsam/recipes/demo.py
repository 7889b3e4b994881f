#!/usr/bin/env python3
"""CPU demo: AdamW vs SAM vs XSAM on Multi30k German->English, end to end with fairseq.

A thin caller of the Multi30k recipe (``recipes/multi30k_de_en/recipe.py``), its ``demo``
preset; outputs under ``work/demo/`` unless ``--out``:

1. ``prepare``: ``data/multi30k/*.gz`` (train 29,000 pairs, val 1,014, three test sets), joint
   SentencePiece BPE, ``fairseq-preprocess`` -> ``data/``;
2. ``train`` the same small transformer three times, same seed and settings: ``adamw``
   (``--optimizer adam``, decoupled weight decay), ``sam`` and ``xsam`` (``--optimizer
   xsam_adamw`` at the rho the Multi30k study chose for each on its validation set, read from
   its committed sweep runs: SAM 0.1, XSAM 0.05; probe-rho 3 rho; xsam searches alpha at the
   first update of every epoch) -> ``runs/<opt>-seed1/``;
3. ``evaluate`` the best checkpoint (validation loss) of each on test2016_flickr,
   test2017_flickr and test2017_mscoco (beam 5, every sentence), sacreBLEU against the raw
   references;
4. the report of ``xsam-report`` (BLEU per test set, paired bootstrap tests, alpha,
   cost, plots), the committed converged study's table (3 seeds, 20 epochs) beside it, and this
   run's timings: ``report.md``, ``valid_loss.png``, ``bleu.png``, ``alpha.png``.

``--quick`` runs the recipe's ``tiny`` preset (1,000 training pairs, the first 100 sentences of
each test set, one epoch, a tiny model, flatness included) to check the whole pipeline in a
minute or two; its BLEU means nothing.
"""

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

from .. import report as reporting  # the report and its plots
from . import multi30k as recipe  # the Multi30k recipe: prepare, train, evaluate
from . import study  # the Multi30k study: its plan and the rho it chose

ROOT = recipe.ROOT

OPTIMIZERS = ("adamw", "sam", "xsam")
STUDY = ROOT / "docs" / "results" / "multi30k"


def study_rho(opt):
    """The rho the Multi30k study chose for ``opt`` on its validation set (its sweep runs), or
    None for adamw."""
    if opt == "adamw":
        return None
    rho = study.chosen_rho(study.load_plan(study.DEFAULT_PLAN), opt)
    if rho is None:
        raise SystemExit(f"demo: the study's sweep runs of {opt} are not all committed under "
                         f"{STUDY / 'runs' / 'sweep'}")
    return rho


def study_section(epochs):
    """The converged study's sacreBLEU table (every committed seed of adamw, sam and xsam),
    to read beside this short run."""
    runs = [reporting.load_run(p, allow_missing=False)
            for p in sorted((STUDY / "runs").glob("*-seed*"))
            if reporting.label_and_seed(p)[0] in OPTIMIZERS]
    groups = reporting.group(runs)
    sets = reporting.test_sets(runs)
    lines = ["", "## Beside it: the converged study (committed, not rerun here)", "",
             "sacreBLEU, mean ± sample std over seeds, of the Multi30k study "
             "(docs/results/multi30k/report.md): the study's 3+3-layer model trained 20 epochs to "
             "its best validation loss, the same rho per optimizer as this demo.", "",
             "| optimizer | rho | " + " | ".join(sets) + " |",
             "|---|---|" + "---|" * len(sets)]
    for opt, members in groups.items():
        rho = study_rho(opt)
        lines.append(f"| {opt} | {rho if rho is not None else '–'} | " + " | ".join(
            reporting.fmt_n([float(r["scores"][t]["sacrebleu"]) for r in members
                                if t in r["scores"]]) for t in sets) + " |")
    lines += ["", f"What each can show: this demo's {epochs}-epoch run (one seed, a smaller "
              "model, far from converged) checks the whole pipeline and shows the cost of each "
              "optimizer, but its BLEU differences say nothing about which optimizer "
              "generalises better; the study's converged runs can say that, at this model size, "
              "and there the three optimizers are within about the seed-to-seed spread of "
              "each other.", ""]
    return "\n".join(lines)


def log(msg):
    print(f"[demo] {msg}", flush=True)


def details(preset, epochs, threads, timings, total):
    """The demo's own section of report.md: configuration, machine and timings."""
    cfg = recipe.PRESETS[preset]
    lines = ["", "## This demo run", "",
             f"Preset: {preset} (recipes/multi30k_de_en/recipe.py), {epochs} epoch(s), "
             f"{threads} torch thread(s), train pairs: {cfg['train_lines'] or 29000}, joint "
             f"SentencePiece BPE vocabulary {cfg['vocab']}; the best checkpoint by validation "
             "loss of each run, the same settings and seed for all three.",
             f"Machine: {os.cpu_count()} CPU core(s), {platform.processor() or platform.machine()}"
             "; other load slows every number here.", "",
             "| optimizer | wall-clock (train) | updates | updates/s | wall-clock (evaluate) |",
             "|---|---|---|---|---|"]
    for opt, (t, eval_s) in timings.items():
        lines.append(f"| {opt} | {t['wall_s']:.0f} s | {t['updates']} | {t['updates_per_s']} | "
                     f"{eval_s:.0f} s |")
    lines += ["", f"Total demo wall-clock: {total:.0f} s.", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="the recipe's tiny preset: a pipeline check (a minute or two)")
    p.add_argument("--epochs", type=recipe.base.int_at_least(1),
                   help="epochs per optimizer (default: the preset's; demo 2, quick 1)")
    p.add_argument("--out", type=Path,
                   help="output folder (default: work/demo, quick: work/demo-quick)")
    p.add_argument("--threads", type=recipe.base.int_at_least(1), default=2,
                   help="torch threads (default: 2)")
    args = p.parse_args(argv)
    t0 = time.time()
    preset = "tiny" if args.quick else "demo"
    epochs = args.epochs or recipe.PRESETS[preset]["table"][("optimization", "max_epoch")]
    out = (args.out or ROOT / "work" / ("demo-quick" if args.quick else "demo")).resolve()
    data, runs = out / "data", out / "runs"
    if runs.exists():
        shutil.rmtree(runs)  # a fresh start: the recipe would resume or skip old runs
    os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    log(f"output: {out}")
    cfg = recipe.PRESETS[preset]
    recipe.prepare(data, vocab=cfg["vocab"], train_lines=cfg["train_lines"],
                   test_lines=cfg["test_lines"], workers=args.threads, log=log)
    timings = {}
    for opt in OPTIMIZERS:
        log(f"training {opt}, {epochs} epoch(s)")
        rho = study_rho(opt)
        recipe.train_main([opt, "1", "--preset", preset, "--data", str(data), "--runs",
                           str(runs), "--cpu", "--quiet", "--max-epoch", str(epochs)]
                          + (["--rho", repr(rho)] if rho is not None else []))
        start = time.time()
        recipe.evaluate_main([str(runs / f"{opt}-seed1"), "--cpu", "--preset", preset,
                              "--quiet"])
        timing = json.loads((runs / f"{opt}-seed1" / "timing.json").read_text())
        timings[opt] = (timing, time.time() - start)
    loaded = [reporting.load_run(runs / f"{opt}-seed1", allow_missing=False)
              for opt in OPTIMIZERS]
    rescored = reporting.rescore(loaded, None)
    reporting.report(loaded, out, "CPU demo: AdamW vs SAM vs XSAM on Multi30k de-en",
                        "One seed, a short training: it shows the pipeline, not converged "
                        "BLEU (see docs/results/multi30k for the study).", rescored=rescored)
    total = time.time() - t0
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write(study_section(epochs))
        f.write(details(preset, epochs, args.threads, timings, total))
    for r in loaded:
        log(f"{r['name']:12s} " + "  ".join(f"{n} {s['sacrebleu']:6.2f}"
                                             for n, s in r["scores"].items()))
    log(f"report: {out / 'report.md'}, plots: {', '.join(x.name for x in out.glob('*.png'))}")
    log(f"total wall-clock: {total:.0f} s")


if __name__ == "__main__":
    main()
