#!/usr/bin/env python3
"""IWSLT'14 German->English with fairseq: train AdamW / SAM / XSAM (and the paper's baselines),
evaluate with tokenized BLEU and sacreBLEU. ``train.sh`` and ``evaluate.sh`` call this file.

Subcommands (``--help`` on each lists every option):

``train OPT [SEED]``  OPT in adamw | sam | xsam | fixed | msam | msam+ | lsam | lsam+.
    adamw = ``--optimizer adam`` (fairseq's Adam with decoupled weight decay); the others
    ``--optimizer xsam_adamw --sam-variant OPT`` (rho 0.15, probe-rho 0.45; xsam searches alpha
    at the first update of every epoch). Writes ``RUNS/<OPT>-seed<SEED>/``: ``command.txt`` (the
    exact command), ``run.json`` (its settings as data),
    ``train.log`` (fairseq's stdout+stderr, also shown live), ``checkpoints/``.
    Running the same command again resumes from ``checkpoint_last.pt``.
``evaluate CKPT``  CKPT is a checkpoint file or a run directory (its ``checkpoint_best.pt``, or
    the average of its last N epoch checkpoints with ``--average-last N``). Runs
    ``fairseq-generate`` (beam 5, ``--remove-bpe``, test subset, every sentence:
    ``--required-batch-size-multiple 1``), checks that every test sentence was translated, and
    writes ``<run>/eval/generate-test.txt`` and ``<run>/eval/bleu.json`` (tokenized BLEU as fairseq
    prints it, sacreBLEU on Moses-detokenized output with its signature).
``configs [--check]``  writes (or checks) ``config/<OPT>.yaml`` for ``fairseq-hydra-train`` from
    the same table that builds the ``train`` command.

All hyper-parameters live in :data:`HYPERPARAMETERS`; ``train_settings`` applies the options.

Example::

    recipes/iwslt14_de_en/train.sh xsam 1 --data data-bin/iwslt14.tokenized.de-en --dry-run
    recipes/iwslt14_de_en/evaluate.sh runs/iwslt14_de_en/xsam-seed1 --average-last 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..report import run_record
from . import base
from . import iwslt14_prepare as prepare  # the test set's files and clean-up
from .base import (  # noqa: F401  (the recipe's names for the tests and the GPU check)
    OPTIMIZERS,
    average_checkpoints,
    check_complete,
    dataset_size,
    last_epoch_checkpoints,
    parse_generate,
    run_dir,
    sacrebleu_score,
    shell_join,
    to_flags,
    to_hydra,
)

ROOT = base.ROOT
USER_DIR = base.USER_DIR
HERE = ROOT / "recipes" / "iwslt14_de_en"  # its shell entry points and hydra configs
CONFIG_DIR = HERE / "config"
DEFAULT_DATA = "data-bin/iwslt14.tokenized.de-en"
DEFAULT_RUNS = "runs/iwslt14_de_en"
IWSLT14_TEST_SENTENCES = 6750
# fairseq's prepare-iwslt14.sh builds the test set from these files, in this order.
IWSLT14_TEST_XML = prepare.TEST_SETS

# The one table: (fairseq config group, field, value, source). The command-line flag is the field
# with dashes (``_name`` fields are --task, --arch, --optimizer, --lr-scheduler, --criterion),
# the hydra config is {group: {field: value}}. Rows marked "xsam" apply to every OPT but adamw.
HYPERPARAMETERS: List[Tuple[str, str, object, str]] = [
    # fairseq examples/translation/README.md, "IWSLT'14 German to English (Transformer)"
    ("task", "_name", "translation", "fairseq"),
    ("model", "_name", "transformer_iwslt_de_en", "fairseq"),
    ("model", "share_decoder_input_output_embed", True, "fairseq"),
    ("optimizer", "_name", "adam", "fairseq"),
    ("optimizer", "adam_betas", "(0.9, 0.98)", "fairseq"),
    ("optimization", "clip_norm", 0.0, "fairseq"),
    ("optimization", "lr", [0.0005], "fairseq"),
    ("lr_scheduler", "_name", "inverse_sqrt", "fairseq"),
    ("lr_scheduler", "warmup_updates", 4000, "fairseq"),
    ("model", "dropout", 0.3, "fairseq"),
    ("optimizer", "weight_decay", 0.0001, "fairseq"),
    ("criterion", "_name", "label_smoothed_cross_entropy", "fairseq"),
    ("criterion", "label_smoothing", 0.1, "fairseq"),
    ("dataset", "max_tokens", 4096, "fairseq"),
    # validation BLEU and best checkpoint by BLEU (fairseq's README, releases 0.10-0.12)
    ("task", "eval_bleu", True, "eval_bleu"),
    ("task", "eval_bleu_args", '{"beam": 5, "max_len_a": 1.2, "max_len_b": 10}', "eval_bleu"),
    ("task", "eval_bleu_detok", "moses", "eval_bleu"),
    ("task", "eval_bleu_remove_bpe", "@@ ", "eval_bleu"),
    ("task", "eval_bleu_print_samples", True, "eval_bleu"),
    ("checkpoint", "best_checkpoint_metric", "bleu", "eval_bleu"),
    ("checkpoint", "maximize_best_checkpoint_metric", True, "eval_bleu"),
    *base.XSAM_ROWS,  # the paper's SAM/XSAM settings for IWSLT14 (appendix D.3)
    # this recipe (fairseq's README trains until stopped by hand)
    ("optimization", "max_epoch", 50, "recipe"),
    ("checkpoint", "keep_last_epochs", 10, "recipe"),
    ("common", "fp16", True, "recipe"),  # GPU default; --cpu or --no-fp16 turn it off
    ("common", "log_format", "simple", "recipe"),
    ("common", "log_interval", 100, "recipe"),
    ("common", "seed", 1, "recipe"),
]

# ----------------------------------------------------------------------------- settings

def train_settings(opt: str, *, seed: int = 1, rho: Optional[float] = None,
                   probe_rho: Optional[float] = None, alpha: Optional[float] = None,
                   ascent_steps: Optional[int] = None, alpha_search: Optional[str] = None,
                   max_epoch: Optional[int] = None, keep_last_epochs: Optional[int] = None,
                   fp16: bool = True, cpu: bool = False, eval_bleu: bool = True,
                   ) -> List[Tuple[str, str, object]]:
    """The ordered (group, field, value) settings of one run of ``train OPT``."""
    table = base.select_rows(HYPERPARAMETERS, opt,
                               skip=lambda source: source == "eval_bleu" and not eval_bleu)
    base.apply_overrides(table, opt, {
        ("optimizer", "rho"): rho, ("optimizer", "probe_rho"): probe_rho,
        ("optimizer", "alpha"): alpha, ("optimizer", "ascent_steps"): ascent_steps,
        ("optimizer", "alpha_search"): alpha_search, ("optimization", "max_epoch"): max_epoch,
        ("checkpoint", "keep_last_epochs"): keep_last_epochs, ("common", "seed"): seed})
    table[("common", "fp16")] = bool(fp16 and not cpu)
    if cpu:
        table[("common", "cpu")] = True
    return [(g, k, v) for (g, k), v in table.items()]


def train_command(opt: str, seed: int, data: str, save_dir: str, extra: Sequence[str] = (),
                  python: str = sys.executable, **options) -> List[str]:
    return base.train_command(train_settings(opt, seed=seed, **options), data, save_dir,
                                extra, python)


def generate_command(data: str, checkpoint: str, results: str, *, batch_size: int = 128,
                     beam: int = 5, cpu: bool = False, extra: Sequence[str] = ()) -> List[str]:
    return base.generate_command(data, checkpoint, results, batch_size=batch_size, beam=beam,
                                   cpu=cpu, extra=extra)


def read_raw_references(paths: Sequence[str]) -> List[str]:
    """Raw cased references: a directory holding IWSLT14's ``*.en.xml`` (taken in the order of
    fairseq's prepare-iwslt14.sh), XML files (``<seg>`` contents in order), or plain text files.
    XML segments get prepare-iwslt14.sh's clean-up (trim, ’ -> ')."""
    files: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for stem in IWSLT14_TEST_XML:
                f = p / f"{stem}.de-en.en.xml"
                if not f.exists():
                    raise SystemExit(f"--ref {p}: {f.name} is missing (expected IWSLT14's test "
                                     f"XML files {', '.join(IWSLT14_TEST_XML)})")
                files.append(f)
        elif p.is_file():
            files.append(p)
        else:
            raise SystemExit(f"--ref {p}: no such file or directory")
    lines: List[str] = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        if f.suffix == ".xml":
            lines += prepare.extract_segments(text.splitlines())  # the test set's own clean-up
        else:
            lines += text.rstrip("\n").split("\n")
    return lines


# ----------------------------------------------------------------------------- CLI: train

_positive_float, _int_at_least = base.positive_float, base.int_at_least


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.sh", description=__doc__.split("\n\n")[0],
                                epilog="Arguments after -- go to fairseq-train unchanged (last).")
    p.add_argument("opt", choices=OPTIMIZERS, metavar="OPT",
                   help="optimizer: " + " | ".join(OPTIMIZERS))
    p.add_argument("seed", nargs="?", type=_int_at_least(0), default=1, help="seed (default 1)")
    p.add_argument("--data", default=os.environ.get("DATA", DEFAULT_DATA),
                   help=f"binarized data (env DATA; default {DEFAULT_DATA})")
    p.add_argument("--runs", default=os.environ.get("RUNS", DEFAULT_RUNS),
                   help=f"runs folder (env RUNS; default {DEFAULT_RUNS})")
    p.add_argument("--max-epoch", type=_int_at_least(1), help="epochs (default 50)")
    p.add_argument("--rho", type=_positive_float, help="ascent radius (default 0.15)")
    p.add_argument("--probe-rho", type=_positive_float, help="probe radius (default 0.45)")
    p.add_argument("--alpha-search", help="xsam only: 'epoch' (default), 'never' or N updates")
    p.add_argument("--alpha", type=float, help="alpha of OPT fixed (required there), or xsam's "
                   "initial alpha (0 <= alpha <= 2)")
    p.add_argument("--ascent-steps", type=_int_at_least(1), help="ascent steps k (default 1)")
    p.add_argument("--cpu", action="store_true", help="train on CPU (fp32)")
    p.add_argument("--no-fp16", action="store_true", help="fp32 on GPU (default there: --fp16)")
    p.add_argument("--no-eval-bleu", action="store_true",
                   help="no validation BLEU; best checkpoint by validation loss")
    p.add_argument("--average-last", type=_int_at_least(1), metavar="N",
                   help="after training, average the last N epoch checkpoints into "
                        "checkpoints/checkpoint_avg_last<N>.pt")
    p.add_argument("--keep-last-epochs", type=_int_at_least(1), help="epoch checkpoints kept "
                   "(default 10)")
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    return p


def train_main(argv: Sequence[str]) -> int:
    own, extra = base.split_extra(argv)
    parser = train_parser()
    args = parser.parse_args(own)
    base.check_alpha_options(parser, args.opt, args.alpha, args.alpha_search, extra)
    keep = args.keep_last_epochs or 10
    if args.average_last and args.average_last > keep:
        parser.error(f"argument --average-last: {args.average_last} (allowed: <= "
                     f"--keep-last-epochs = {keep}, or raise --keep-last-epochs)")
    run = run_dir(args.runs, args.opt, args.seed)
    try:
        settings = train_settings(
            args.opt, seed=args.seed,
            rho=args.rho, probe_rho=args.probe_rho, alpha=args.alpha,
            ascent_steps=args.ascent_steps, alpha_search=args.alpha_search,
            max_epoch=args.max_epoch, keep_last_epochs=args.keep_last_epochs,
            fp16=not args.no_fp16, cpu=args.cpu, eval_bleu=not args.no_eval_bleu)
    except ValueError as e:
        parser.error(str(e))
    command = base.train_command(settings, args.data, run / "checkpoints", extra)
    record = run_record.record(command, args.data, run / "checkpoints",
                               run_record.settings_of(settings, base.NAME_FLAGS), extra)
    if args.dry_run:
        print(shell_join(command))
        return 0
    if not args.cpu:
        base.require_cuda("train.sh")
    if not Path(args.data).is_dir():
        raise SystemExit(f"train.sh: --data {args.data} is not a directory (binarize IWSLT14 "
                         "with recipes/iwslt14_de_en/prepare.sh first)")
    base.run_training(run, command, "train.sh", record=record)
    if args.average_last:
        paths = last_epoch_checkpoints(run / "checkpoints", args.average_last)
        out = average_checkpoints(
            paths, run / "checkpoints" / f"checkpoint_avg_last{args.average_last}.pt")
        print(f"train.sh: averaged {', '.join(p.name for p in paths)} -> {out}")
    return 0


# ----------------------------------------------------------------------------- CLI: evaluate

def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.sh", description="fairseq-generate on the test "
                                "set; tokenized BLEU and sacreBLEU; <run>/eval/bleu.json.",
                                epilog="Arguments after -- go to fairseq-generate unchanged.")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file, or a run directory")
    p.add_argument("--data", help="binarized data (default: the data of the run's run.json, "
                   f"else env DATA or {DEFAULT_DATA})")
    p.add_argument("--average-last", type=_int_at_least(1), metavar="N",
                   help="evaluate the average of the run's last N epoch checkpoints")
    p.add_argument("--batch-size", type=_int_at_least(1), default=128, help="sentences per "
                   "batch (default 128)")
    p.add_argument("--beam", type=_int_at_least(1), default=5, help="beam size (default 5)")
    p.add_argument("--cpu", action="store_true", help="generate on CPU")
    p.add_argument("--ref", nargs="+", metavar="PATH",
                   help="raw cased references for sacreBLEU: IWSLT14's de-en folder of XML "
                        "files, XML files or text files (then scored case-insensitively); "
                        "default: the detokenized tokenized references")
    p.add_argument("--expect-sentences", type=_int_at_least(1), metavar="N",
                   help=f"fail unless the test set has N sentences (IWSLT14: "
                        f"{IWSLT14_TEST_SENTENCES})")
    p.add_argument("--source-lang", default="de")
    p.add_argument("--target-lang", default="en")
    p.add_argument("--out", help="output folder (default <run>/eval)")
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    return p


def evaluate_main(argv: Sequence[str]) -> int:
    parser = evaluate_parser()
    args, extra, run, ckpt_dir, checkpoint = base.parse_evaluate_args(parser, argv)
    if args.average_last:
        checkpoint = ckpt_dir / f"checkpoint_avg_last{args.average_last}.pt"
    data = args.data or base.run_data(run) or os.environ.get("DATA", DEFAULT_DATA)
    out = Path(args.out) if args.out else run / "eval"
    command = generate_command(data, checkpoint, out, batch_size=args.batch_size,
                               beam=args.beam, cpu=args.cpu, extra=extra)
    if args.dry_run:
        print(shell_join(command))
        return 0
    if not args.cpu:
        base.require_cuda("evaluate.sh")
    if args.average_last:
        paths = last_epoch_checkpoints(ckpt_dir, args.average_last)
        average_checkpoints(paths, checkpoint)
        print(f"evaluate.sh: averaged {', '.join(p.name for p in paths)} -> {checkpoint}")
    if not checkpoint.is_file():
        raise SystemExit(f"evaluate.sh: checkpoint {checkpoint} does not exist")
    expected = dataset_size(data, "test", args.source_lang, args.target_lang)
    if args.expect_sentences and expected != args.expect_sentences:
        raise SystemExit(f"evaluate.sh: the test set of {data} has {expected} sentences, not "
                         f"--expect-sentences {args.expect_sentences}")
    out.mkdir(parents=True, exist_ok=True)
    print(f"evaluate.sh: {shell_join(command)}", flush=True)
    rc = base.run_tee(command, out / "generate.log")
    if rc != 0:
        raise SystemExit(f"evaluate.sh: fairseq-generate failed with exit status {rc} "
                         f"(see {out / 'generate.log'})")
    parsed = parse_generate((out / "generate-test.txt").read_text(encoding="utf-8"))
    ids = check_complete(parsed, expected)
    from sacremoses import MosesDetokenizer

    detok = MosesDetokenizer(lang=args.target_lang)
    hyps = [detok.detokenize(parsed["hyps"][i].split()) for i in ids]
    if args.ref:
        refs = read_raw_references(args.ref)
        if len(refs) != expected:
            raise SystemExit(f"evaluate.sh: --ref holds {len(refs)} references for {expected} "
                             "test sentences")
        lowercase, ref_kind = True, "raw cased references (" + ", ".join(args.ref) + \
            "), scored case-insensitively (case:lc)"
    else:
        refs = [detok.detokenize(parsed["refs"][i].split()) for i in ids]
        lowercase, ref_kind = False, "fairseq's tokenized references, Moses-detokenized"
    score, signature = sacrebleu_score(hyps, refs, lowercase)
    (out / "hypotheses.detok.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    result = {"tokenized_bleu": parsed["bleu"], "sacrebleu": round(score, 2),
              "sacrebleu_signature": signature + ("|refs:raw" if args.ref else "|refs:detok"),
              "sacrebleu_references": ref_kind, "hypotheses": len(ids),
              "references": len(refs), "checkpoint": str(checkpoint),
              "command": shell_join(command)}
    (out / "bleu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"evaluate.sh: tokenized BLEU4 {parsed['bleu']:.2f} | sacreBLEU {score:.2f} "
          f"({result['sacrebleu_signature']}) | {len(ids)} sentences -> {out / 'bleu.json'}")
    return 0


# ----------------------------------------------------------------------------- CLI: configs

def render_yaml(opt: str) -> str:
    """config/<OPT>.yaml: the settings of ``train OPT`` (GPU, seed 1) for fairseq-hydra-train."""
    header = base.yaml_header("IWSLT'14 De-En", "iwslt14_de_en", opt, "data-bin/iwslt14.tokenized.de-en", "")
    return base.render_yaml(train_settings(opt), header)


def configs_main(argv: Sequence[str]) -> int:
    return base.configs_main(argv, CONFIG_DIR, render_yaml, "recipe.py")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return base.dispatch(argv, {"train": train_main, "evaluate": evaluate_main, "configs": configs_main}, __doc__)


if __name__ == "__main__":
    sys.exit(main())
