"""xsam-report: compare optimizers over runs: BLEU mean ± std per optimizer, deltas, plots.

Inputs: run directories written by the recipes' ``train.sh`` and ``evaluate.sh``
(``recipes/iwslt14_de_en``, ``recipes/multi30k_de_en``), named ``<OPT>-seed<SEED>`` (the label is
the part before "-seed"); each holds ``command.txt``, ``train.log`` (fairseq's log, simple or
hydra format), ``eval/bleu.json`` and optionally ``eval/sharpness.json`` (keys lambda_max,
lambda_ratio, avg_sharpness; xsam-flatness) and ``timing.json`` (wall-clock, updates/s).
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

    xsam-report runs/iwslt14_de_en/*-seed* --out docs/results/iwslt14
    xsam-report docs/results/multi30k/runs/*-seed* --rescore \
        --sweep docs/results/multi30k/runs/sweep/*-seed* --out docs/results/multi30k
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .runs import ReportError, load_run
from .stats import rescore
from .tables import report


def main(argv=None) -> int:
    """xsam-report's command line; a missing or inconsistent input ends it with its message
    (exit status 1)."""
    try:
        return _main(argv)
    except ReportError as e:
        raise SystemExit(str(e)) from None


def _main(argv) -> int:
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
            raise SystemExit(f"xsam-report: --rescore: {len(bad)} of {len(rescored)} "
                            "hypothesis files do not reproduce bleu.json" if rescored else
                             "xsam-report: --rescore: no hypothesis files with references "
                            "named in bleu.json")
    if args.out is None:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    sweep = [load_run(r, True) for r in args.sweep]
    report(runs, args.out, args.title, args.note, sweep=sweep, refs_dir=args.refs,
           rescored=rescored, bootstrap=args.bootstrap)
    print(f"xsam-report: wrote {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
