#!/usr/bin/env python3
"""Multi30k (task 1) German->English with fairseq: prepare, train AdamW / SAM / XSAM (and the
paper's baselines) and score every model on three test sets. ``prepare.sh``, ``train.sh`` and
``evaluate.sh`` call this file; ``study.py`` runs a whole plan of them.

Subcommands (``--help`` on each lists every option):

``prepare [--preset P] [--out DIR]``  unpacks ``data/multi30k/*.gz`` (train 29,000 pairs, val
    1,014, test_2016_flickr 1,000, test_2017_flickr 1,000, test_2017_mscoco 461), trains one
    joint SentencePiece BPE model on train de+en, encodes every split and runs
    ``fairseq-preprocess --joined-dictionary``; the test sets become the subsets ``test``,
    ``test1`` and ``test2``. ``DIR/manifest.json`` records what was done; a folder already
    prepared with the same settings is kept as it is.
``train OPT [SEED]``  OPT in adamw | sam | xsam | fixed | msam | msam+ | lsam | lsam+.
    adamw = ``--optimizer adam`` (decoupled weight decay); the others ``--optimizer xsam_adamw
    --sam-variant OPT`` (``--rho R``, ``--probe-rho`` = 3R unless given; xsam searches alpha at
    the first update of every epoch). Writes ``RUNS/<LABEL>-seed<SEED>/`` (LABEL = OPT unless
    ``--label``): ``command.txt``, ``run.json`` (the settings as data),
    ``train.log``, ``timing.json``, ``checkpoints/`` (only
    ``checkpoint_best.pt``, best validation loss, and ``checkpoint_last.pt``). The same command
    again resumes an interrupted run and skips a finished one.
``evaluate RUN|CKPT``  ``fairseq-generate`` (beam 5) of ``checkpoint_best.pt`` on each test
    set, checking that every sentence was translated; writes ``eval/<TESTSET>.hyp.en`` (the
    detokenized hypotheses, one line per source sentence, in test order), ``eval/bleu.json``
    ({TESTSET: {sacrebleu, signature, tokenized_bleu, hypotheses, references, ...}}, sacreBLEU
    against the raw cased references) and ``eval/sharpness.json`` (``xsam-flatness``:
    λ_max and average sharpness on training batches).
``configs [--check]``  writes (or checks) ``config/<OPT>.yaml`` for ``fairseq-hydra-train``
    (the ``study`` preset) from the same table that builds the ``train`` command.

Settings: :data:`HYPERPARAMETERS` (shared by every preset) and :data:`PRESETS` (model size,
epochs, vocabulary, data slice, sharpness cost): ``study`` (the optimizer study), ``demo``
(README command 1) and ``tiny`` (the tests).

Example::

    recipes/multi30k_de_en/prepare.sh
    recipes/multi30k_de_en/train.sh xsam 1 --cpu --rho 0.1
    recipes/multi30k_de_en/evaluate.sh runs/multi30k_de_en/xsam-seed1 --cpu
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..report import run_record
from . import base
from .base import OPTIMIZERS, shell_join

ROOT = base.ROOT
HERE = ROOT / "recipes" / "multi30k_de_en"  # its shell entry points, hydra configs and study plan
CONFIG_DIR = HERE / "config"
SOURCE = ROOT / "data" / "multi30k"
DEFAULT_RUNS = "runs/multi30k_de_en"
SRC, TGT = "de", "en"
# fairseq subset -> test set name
TEST_SETS = {"test": "test2016_flickr", "test1": "test2017_flickr", "test2": "test2017_mscoco"}
# our split -> file stem in data/multi30k
SPLITS = {"train": "train", "valid": "val", "test2016_flickr": "test_2016_flickr",
          "test2017_flickr": "test_2017_flickr", "test2017_mscoco": "test_2017_mscoco"}
TEST_SIZES = {"test2016_flickr": 1000, "test2017_flickr": 1000, "test2017_mscoco": 461}

# The table shared by every preset: (fairseq config group, field, value, source). The flag is the
# field with dashes (``_name``: --task, --arch, --optimizer, --lr-scheduler, --criterion); the
# hydra config is {group: {field: value}}. Rows marked "xsam" apply to every OPT but adamw,
# "xsam-search" to xsam only; "<preset>" values come from PRESETS.
HYPERPARAMETERS: List[Tuple[str, str, object, str]] = [
    ("task", "_name", "translation", "recipe"),
    ("task", "source_lang", SRC, "recipe"),
    ("task", "target_lang", TGT, "recipe"),
    ("model", "_name", "transformer", "recipe"),
    ("model", "share_all_embeddings", True, "recipe"),
    ("model", "encoder_layers", "<preset>", "preset"),
    ("model", "decoder_layers", "<preset>", "preset"),
    ("model", "encoder_embed_dim", "<preset>", "preset"),
    ("model", "decoder_embed_dim", "<preset>", "preset"),
    ("model", "encoder_ffn_embed_dim", "<preset>", "preset"),
    ("model", "decoder_ffn_embed_dim", "<preset>", "preset"),
    ("model", "encoder_attention_heads", "<preset>", "preset"),
    ("model", "decoder_attention_heads", "<preset>", "preset"),
    ("model", "dropout", "<preset>", "preset"),
    ("optimizer", "_name", "adam", "recipe"),
    ("optimizer", "adam_betas", "(0.9, 0.98)", "recipe"),
    ("optimizer", "weight_decay", 0.0001, "recipe"),
    ("optimization", "lr", "<preset>", "preset"),
    ("lr_scheduler", "_name", "inverse_sqrt", "recipe"),
    ("lr_scheduler", "warmup_updates", "<preset>", "preset"),
    ("lr_scheduler", "warmup_init_lr", 1e-07, "recipe"),
    ("criterion", "_name", "label_smoothed_cross_entropy", "recipe"),
    ("criterion", "label_smoothing", 0.1, "recipe"),
    ("dataset", "max_tokens", "<preset>", "preset"),
    ("dataset", "num_workers", 0, "recipe"),  # no loader process: 2 cores train faster
    ("optimization", "max_epoch", "<preset>", "preset"),
    # scored checkpoint: checkpoint_best.pt by validation loss (fairseq's default metric)
    ("checkpoint", "no_epoch_checkpoints", True, "recipe"),
    *base.XSAM_ROWS,  # the paper's SAM/XSAM settings: rho' = 3 rho
    ("common", "fp16", True, "recipe"),  # GPU default; --cpu or --no-fp16 turn it off
    ("common", "log_format", "simple", "recipe"),
    ("common", "log_interval", "<preset>", "preset"),
    ("common", "seed", 1, "recipe"),
]
PROBE_RATIO = 3.0  # --probe-rho defaults to PROBE_RATIO x --rho (the paper's ratio)

_STUDY_MODEL = {  # transformer 3+3 layers, embed 128, ffn 512, 4 heads (the demo's model)
    ("model", "encoder_layers"): 3, ("model", "decoder_layers"): 3,
    ("model", "encoder_embed_dim"): 128, ("model", "decoder_embed_dim"): 128,
    ("model", "encoder_ffn_embed_dim"): 512, ("model", "decoder_ffn_embed_dim"): 512,
    ("model", "encoder_attention_heads"): 4, ("model", "decoder_attention_heads"): 4,
    ("model", "dropout"): 0.1, ("optimization", "lr"): [0.002],
    ("lr_scheduler", "warmup_updates"): 200, ("dataset", "max_tokens"): 2048,
}
# Presets: the table's "<preset>" values, then the data (joint SentencePiece vocabulary, the
# first train_lines training pairs or all; test_lines: the first N sentences of each test set,
# for the tests only) and the flatness measurement (xsam-flatness).
# The study's model and epochs are set HERE (one place), after the pilot.
PRESETS: Dict[str, dict] = {
    "study": dict(table={**_STUDY_MODEL, ("optimization", "max_epoch"): 20,
                         ("common", "log_interval"): 100},
                  vocab=6000, train_lines=None, test_lines=None,
                  sharpness=dict(batches=4, max_tokens=2048, lanczos_iters=20, directions=20)),
    # README command 1: AdamW, SAM and XSAM in under 20 minutes on 2 cores: the study's model with
    # 2+2 layers for 2 epochs (measured on the idle machine, 2 threads: 3 epochs took 26 minutes
    # in all, an epoch 85 s for AdamW and 185-190 s for SAM and XSAM)
    "demo": dict(table={**_STUDY_MODEL, ("model", "encoder_layers"): 2,
                        ("model", "decoder_layers"): 2, ("optimization", "max_epoch"): 2,
                        ("common", "log_interval"): 25},
                 vocab=6000, train_lines=None, test_lines=None, sharpness=None),
    "tiny": dict(table={
        ("model", "encoder_layers"): 1, ("model", "decoder_layers"): 1,
        ("model", "encoder_embed_dim"): 32, ("model", "decoder_embed_dim"): 32,
        ("model", "encoder_ffn_embed_dim"): 64, ("model", "decoder_ffn_embed_dim"): 64,
        ("model", "encoder_attention_heads"): 2, ("model", "decoder_attention_heads"): 2,
        ("model", "dropout"): 0.1, ("optimization", "lr"): [0.002],
        ("lr_scheduler", "warmup_updates"): 20, ("dataset", "max_tokens"): 2048,
        ("optimization", "max_epoch"): 1, ("common", "log_interval"): 10},
        vocab=500, train_lines=1000, test_lines=100,
        sharpness=dict(batches=1, max_tokens=1024, lanczos_iters=5, directions=1)),
}
GENERATE = ["--source-lang", SRC, "--target-lang", TGT, "--max-len-a", "1.2",
            "--max-len-b", "10"]  # beam 5 (generate_command), at most 1.2 x source + 10 tokens
LABEL_RE = re.compile(r"[A-Za-z0-9_.+=]+(?:-[A-Za-z0-9_.+=]+)*(?:/[A-Za-z0-9_.+=-]+)*")


def default_data(preset: str) -> str:
    """The data folder of a preset: one per vocabulary and training slice."""
    p = PRESETS[preset]
    return f"data-bin/multi30k_de_en/spm{p['vocab']}" + \
        (f"-train{p['train_lines']}" if p["train_lines"] else "") + \
        (f"-test{p['test_lines']}" if p["test_lines"] else "")


# ----------------------------------------------------------------------------- settings

def train_settings(opt: str, *, preset: str = "study", seed: int = 1,
                   rho: Optional[float] = None, probe_rho: Optional[float] = None,
                   alpha: Optional[float] = None, ascent_steps: Optional[int] = None,
                   alpha_search: Optional[str] = None, max_epoch: Optional[int] = None,
                   fp16: bool = True, cpu: bool = False,
                   epoch_checkpoints: bool = False) -> List[Tuple[str, str, object]]:
    """The ordered (group, field, value) settings of one run of ``train OPT``."""
    if preset not in PRESETS:
        raise ValueError(f"Invalid --preset value: {preset!r} (allowed: {', '.join(PRESETS)})")
    table = base.select_rows(HYPERPARAMETERS, opt)
    for key, value in table.items():
        if value == "<preset>":
            table[key] = PRESETS[preset]["table"][key]
    if rho is not None and probe_rho is None and opt != "adamw":
        probe_rho = round(PROBE_RATIO * rho, 10)
    base.apply_overrides(table, opt, {
        ("optimizer", "rho"): rho, ("optimizer", "probe_rho"): probe_rho,
        ("optimizer", "alpha"): alpha, ("optimizer", "ascent_steps"): ascent_steps,
        ("optimizer", "alpha_search"): alpha_search, ("optimization", "max_epoch"): max_epoch,
        ("common", "seed"): seed})
    table[("common", "fp16")] = bool(fp16 and not cpu)
    if epoch_checkpoints:
        table[("checkpoint", "no_epoch_checkpoints")] = False
    if cpu:
        table[("common", "cpu")] = True
    return [(g, k, v) for (g, k), v in table.items()]


def check_label(label: str) -> str:
    if not LABEL_RE.fullmatch(label) or "-seed" in label or ".." in label.split("/"):
        raise ValueError(f"Invalid --label value: {label!r} (allowed: letters, digits and "
                         "._+=- in /-separated parts, without '-seed', e.g. xsam_auto or "
                         "sweep/sam-rho0.1)")
    return label


# ----------------------------------------------------------------------------- prepare

def read_source(name: str, lang: str, source: Path = SOURCE) -> List[str]:
    """The lines of ``data/multi30k/<name>.<lang>.gz`` (raw, cased)."""
    with gzip.open(source / f"{name}.{lang}.gz", "rt", encoding="utf-8") as f:
        return f.read().rstrip("\n").split("\n")


def reference_file(data, testset: str) -> Path:
    """The raw, cased English references of a test set, as prepare copied them."""
    return Path(data) / "raw" / f"{testset}.{TGT}"


def source_digest(source: Path = SOURCE) -> str:
    """SHA-256 over the names and bytes of the source corpus files: the data's identity, so that
    a preparation is reused from any checkout of the same corpus and never from another one."""
    digest = hashlib.sha256()
    for path in sorted(Path(source).glob("*.gz")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def prepare(out, *, vocab: int, train_lines: Optional[int], test_lines: Optional[int] = None,
            workers: int = 1, source: Path = SOURCE, log=print) -> dict:
    """Unpacks, SentencePiece-encodes and binarizes Multi30k into ``out``; returns the manifest.
    A folder already holding a finished preparation with the same settings is kept."""
    out = Path(out)
    settings = {"vocab": vocab, "train_lines": train_lines, "test_lines": test_lines,
                "source_sha256": source_digest(source), "test_sets": TEST_SETS}
    manifest_file = out / "manifest.json"
    if manifest_file.exists():
        manifest = json.loads(manifest_file.read_text())
        if {k: manifest.get(k) for k in settings} == settings:
            log(f"prepare: {out} is prepared already ({manifest_file})")
            return manifest
        differ = ", ".join(k if k in manifest else f"{k} (not recorded: an older preparation)"
                           for k in settings if manifest.get(k) != settings[k])
        raise SystemExit(f"prepare: {out} holds data prepared with other settings ({differ}; "
                         f"see {manifest_file}); choose another --out or remove it")
    (out / "raw").mkdir(parents=True, exist_ok=True)
    (out / "spm").mkdir(exist_ok=True)
    sizes = {}
    for split, stem in SPLITS.items():
        pair = [read_source(stem, lang, source) for lang in (SRC, TGT)]
        if len(pair[0]) != len(pair[1]):
            raise SystemExit(f"prepare: {stem}.{SRC}.gz and {stem}.{TGT}.gz differ in length")
        if split in TEST_SIZES and len(pair[0]) != TEST_SIZES[split]:
            raise SystemExit(f"prepare: {stem} has {len(pair[0])} sentences, expected "
                             f"{TEST_SIZES[split]}")
        cut = train_lines if split == "train" else test_lines if split in TEST_SIZES else None
        if cut:
            pair = [lines[:cut] for lines in pair]
        for lang, lines in zip((SRC, TGT), pair):
            (out / "raw" / f"{split}.{lang}").write_text("\n".join(lines) + "\n",
                                                        encoding="utf-8")
        sizes[split] = len(pair[0])
    joint = out / "spm" / "train.joint"
    joint.write_text("".join((out / "raw" / f"train.{lang}").read_text(encoding="utf-8")
                             for lang in (SRC, TGT)), encoding="utf-8")
    try:
        model = base.train_sentencepiece(str(joint), str(out / "spm" / "spm"), vocab, workers)
    except ValueError as e:
        raise SystemExit(f"prepare: --vocab {vocab}: {e}") from None
    joint.unlink()
    for split in SPLITS:
        for lang in (SRC, TGT):
            lines = (out / "raw" / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            (out / "spm" / f"{split}.{lang}").write_text(
                "\n".join(base.encode_sentencepiece(model, lines)) + "\n", encoding="utf-8")
    log(f"prepare: joint SentencePiece BPE, vocabulary {vocab}: {model}; {sizes}")
    command = base.preprocess_command(
        SRC, TGT, out / "spm" / "train", out / "spm" / "valid",
        [out / "spm" / name for name in TEST_SETS.values()], out, workers, joined=True)
    rc = base.run_tee(command, out / "preprocess.log", echo=False)
    if rc != 0:
        raise SystemExit(f"prepare: fairseq-preprocess failed with exit status {rc} "
                         f"(see {out / 'preprocess.log'})")
    manifest = {**settings, "sizes": sizes, "spm_model": str(model),
                "preprocess": shell_join(command)}
    manifest_file.write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"prepare: binarized {', '.join(f'{k}={v}' for k, v in TEST_SETS.items())} -> {out}")
    return manifest


def prepare_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="prepare.sh", description="Multi30k De-En: joint "
                                "SentencePiece BPE and fairseq-preprocess (joined dictionary).")
    p.add_argument("--preset", choices=PRESETS, default="study",
                   help="vocabulary and training slice of this preset (default study)")
    p.add_argument("--out", help="output folder (default: the preset's data folder, "
                   f"e.g. {default_data('study')})")
    p.add_argument("--vocab", type=base.int_at_least(100), help="vocabulary size (default: "
                   "the preset's)")
    p.add_argument("--train-lines", type=base.int_at_least(1), help="use the first N training "
                   "pairs (default: the preset's; study: all 29,000)")
    p.add_argument("--workers", type=base.int_at_least(1), default=1)
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    prepare(args.out or default_data(args.preset), vocab=args.vocab or preset["vocab"],
            train_lines=args.train_lines or preset["train_lines"],
            test_lines=preset["test_lines"], workers=args.workers)
    return 0


# ----------------------------------------------------------------------------- train

def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.sh", description=__doc__.split("\n\n")[0],
                                epilog="Arguments after -- go to fairseq-train unchanged (last).")
    p.add_argument("opt", choices=OPTIMIZERS, metavar="OPT",
                   help="optimizer: " + " | ".join(OPTIMIZERS))
    p.add_argument("seed", nargs="?", type=base.int_at_least(0), default=1,
                   help="seed (default 1)")
    p.add_argument("--preset", choices=PRESETS, default="study",
                   help="model size, epochs and data: " + ", ".join(PRESETS) + " (default study)")
    p.add_argument("--data", help="binarized data (default: the preset's, e.g. "
                   f"{default_data('study')})")
    p.add_argument("--runs", default=os.environ.get("RUNS", DEFAULT_RUNS),
                   help=f"runs folder (env RUNS; default {DEFAULT_RUNS})")
    p.add_argument("--label", help="run label (default OPT): the run is RUNS/<LABEL>-seed<SEED>, "
                   "e.g. --label xsam_auto for a variant")
    p.add_argument("--max-epoch", type=base.int_at_least(1), help="epochs (default: the "
                   "preset's)")
    p.add_argument("--rho", type=base.positive_float, help="ascent radius (default 0.15)")
    p.add_argument("--probe-rho", type=base.positive_float,
                   help=f"probe radius (default {PROBE_RATIO:g} x --rho: 0.45)")
    p.add_argument("--alpha-search", help="xsam only: 'epoch' (default), 'never' or N updates")
    p.add_argument("--alpha", type=float, help="alpha of OPT fixed (required there), or xsam's "
                   "initial alpha (0 <= alpha <= 2)")
    p.add_argument("--ascent-steps", type=base.int_at_least(1), help="ascent steps k (default 1)")
    p.add_argument("--epoch-checkpoints", action="store_true",
                   help="also keep checkpoint<N>.pt of every epoch (outside git; for measurements "
                   "on checkpoints from early, middle and late in training)")
    p.add_argument("--cpu", action="store_true", help="train on CPU (fp32)")
    p.add_argument("--no-fp16", action="store_true", help="fp32 on GPU (default there: --fp16)")
    p.add_argument("--quiet", action="store_true", help="fairseq's output to train.log only")
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    return p


def train_args(argv: Sequence[str]):
    """(parsed options, run directory, command) of ``train`` arguments; parser errors exit 2."""
    own, extra = base.split_extra(argv)
    parser = train_parser()
    args = parser.parse_args(own)
    base.check_alpha_options(parser, args.opt, args.alpha, args.alpha_search, extra)
    try:
        label = check_label(args.label or args.opt)
        settings = train_settings(
            args.opt, preset=args.preset, seed=args.seed, rho=args.rho,
            probe_rho=args.probe_rho, alpha=args.alpha, ascent_steps=args.ascent_steps,
            alpha_search=args.alpha_search, max_epoch=args.max_epoch, fp16=not args.no_fp16,
            cpu=args.cpu, epoch_checkpoints=args.epoch_checkpoints)
    except ValueError as e:
        parser.error(str(e))
    args.data = args.data or default_data(args.preset)
    run = base.run_dir(args.runs, label, args.seed)
    command = base.train_command(settings, args.data, run / "checkpoints", extra)
    args.record = run_record.record(command, args.data, run / "checkpoints",
                                    run_record.settings_of(settings, base.NAME_FLAGS), extra)
    return args, run, command


def train_main(argv: Sequence[str]) -> int:
    args, run, command = train_args(argv)
    if args.dry_run:
        print(shell_join(command))
        return 0
    if not args.cpu:
        base.require_cuda("train.sh")
    if not (Path(args.data) / "manifest.json").is_file():
        raise SystemExit(f"train.sh: --data {args.data} is not a prepared Multi30k folder (run "
                         f"recipes/multi30k_de_en/prepare.sh --preset {args.preset} first)")
    timing = base.run_training(run, command, "train.sh", echo=not args.quiet,
                               record=args.record)
    print(f"train.sh: {run}: {timing['updates']} updates, {timing['wall_s']:.0f} s wall-clock, "
          f"{timing['updates_per_s']} updates/s of training", flush=True)
    return 0


# ----------------------------------------------------------------------------- evaluate

def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.sh", description="fairseq-generate on the three "
                                "test sets, sacreBLEU and tokenized BLEU, flatness.",
                                epilog="Arguments after -- go to fairseq-generate unchanged.")
    p.add_argument("checkpoint", metavar="RUN|CKPT", help="a run directory (its "
                   "checkpoints/checkpoint_best.pt) or a checkpoint file")
    p.add_argument("--data", help="prepared data (default: the data of the run's run.json)")
    p.add_argument("--preset", choices=PRESETS, default="study",
                   help="the sharpness settings of this preset (default study)")
    p.add_argument("--batch-size", type=base.int_at_least(1), default=128,
                   help="sentences per batch (default 128)")
    p.add_argument("--beam", type=base.int_at_least(1), default=5, help="beam size (default 5)")
    p.add_argument("--cpu", action="store_true", help="generate on CPU")
    p.add_argument("--no-sharpness", action="store_true",
                   help="skip the flatness measurement (xsam-flatness, eval/sharpness.json)")
    p.add_argument("--out", help="output folder (default <run>/eval)")
    p.add_argument("--quiet", action="store_true", help="tool output to the logs only")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p


def flatness_command(checkpoint, data, out, preset: str, cpu: bool) -> Optional[List[str]]:
    cfg = PRESETS[preset]["sharpness"]
    if cfg is None:
        return None
    return [sys.executable, "-m", "fairseq_xsam.lab.flatness", str(checkpoint),
            "--data", str(data), "--split", "train", "--batches", str(cfg["batches"]),
            "--max-tokens", str(cfg["max_tokens"]), "--lanczos-iters", str(cfg["lanczos_iters"]),
            "--directions", str(cfg["directions"]), "--seed", "1", *(["--cpu"] if cpu else []),
            "--out", str(out)]


def evaluate_main(argv: Sequence[str]) -> int:
    parser = evaluate_parser()
    args, extra, run, _, checkpoint = base.parse_evaluate_args(parser, argv)
    data = args.data or base.run_data(run)
    if data is None:
        parser.error(f"argument --data: required ({run} has no run.json to take it from)")
    out = Path(args.out) if args.out else run / "eval"
    commands = {subset: base.generate_command(
        data, checkpoint, out, batch_size=args.batch_size, beam=args.beam, cpu=args.cpu,
        subset=subset, remove_bpe="sentencepiece", options=GENERATE, extra=extra)
        for subset in TEST_SETS}
    sharp = None if args.no_sharpness else flatness_command(
        checkpoint, data, out / "sharpness.json", args.preset, args.cpu)
    if args.dry_run:
        print("\n".join(shell_join(c) for c in [*commands.values(), *([sharp] if sharp else [])]))
        return 0
    if not args.cpu:
        base.require_cuda("evaluate.sh")
    if not checkpoint.is_file():
        raise SystemExit(f"evaluate.sh: checkpoint {checkpoint} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    result, start = {}, time.time()
    for subset, command in commands.items():
        result[TEST_SETS[subset]] = score_test_set(data, subset, command, out, checkpoint,
                                                   echo=not args.quiet)
    (out / "bleu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"evaluate.sh: {out / 'bleu.json'} ({time.time() - start:.0f} s)", flush=True)
    if sharp:
        start = time.time()
        rc = base.run_tee(sharp, out / "sharpness.log", echo=not args.quiet)
        if rc != 0:
            raise SystemExit(f"evaluate.sh: xsam-flatness failed with exit status {rc} "
                             f"(see {out / 'sharpness.log'})")
        print(f"evaluate.sh: {out / 'sharpness.json'} ({time.time() - start:.0f} s)", flush=True)
    return 0


def score_test_set(data, subset: str, command: Sequence[str], out: Path, checkpoint: Path,
                   echo: bool = True) -> dict:
    """Generates one test set, checks that every sentence was translated, writes
    ``<TESTSET>.hyp.en`` and returns its scores."""
    name = TEST_SETS[subset]
    refs = reference_file(data, name).read_text(encoding="utf-8").rstrip("\n").split("\n")
    expected = base.dataset_size(data, subset, SRC, TGT)
    if expected != len(refs):
        raise SystemExit(f"evaluate.sh: {data}: the binarized {subset} set has {expected} "
                         f"sentences, its references {len(refs)}")
    print(f"evaluate.sh: {name}: {shell_join(command)}", flush=True)
    rc = base.run_tee(command, out / f"generate-{subset}.log", echo=echo)
    if rc != 0:
        raise SystemExit(f"evaluate.sh: fairseq-generate failed with exit status {rc} "
                         f"(see {out / f'generate-{subset}.log'})")
    parsed = base.parse_generate((out / f"generate-{subset}.txt").read_text(encoding="utf-8"))
    ids = base.check_complete(parsed, expected, what=name)
    if sorted(parsed["detok"]) != ids:
        raise SystemExit(f"evaluate.sh: {name}: {len(parsed['detok'])} detokenized hypotheses "
                         f"(D- lines) for {expected} sentences")
    hyps = [parsed["detok"][i] for i in ids]
    hyp_file = out / f"{name}.hyp.{TGT}"
    hyp_file.write_text("\n".join(hyps) + "\n", encoding="utf-8")
    score, signature = base.sacrebleu_score(hyps, refs)
    print(f"evaluate.sh: {name}: sacreBLEU {score:.2f} ({signature}), tokenized BLEU4 "
          f"{parsed['bleu']:.2f}, {len(hyps)}/{expected} sentences", flush=True)
    return {"sacrebleu": round(score, 2), "signature": signature,
            "tokenized_bleu": parsed["bleu"], "hypotheses": len(hyps), "references": len(refs),
            "hypothesis_file": hyp_file.name,
            "reference_file": f"data/multi30k/{SPLITS[name]}.{TGT}.gz",
            "checkpoint": str(checkpoint), "command": shell_join(command)}


# ----------------------------------------------------------------------------- configs

def render_yaml(opt: str) -> str:
    """config/<OPT>.yaml: the settings of ``train OPT`` (study preset, GPU, seed 1)."""
    header = base.yaml_header("Multi30k De-En", "multi30k_de_en", opt, default_data('study'), "study preset, ")
    return base.render_yaml(train_settings(opt), header)


def configs_main(argv: Sequence[str]) -> int:
    return base.configs_main(argv, CONFIG_DIR, render_yaml, "recipe.py")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return base.dispatch(argv, {"prepare": prepare_main, "train": train_main, "evaluate": evaluate_main,
                            "configs": configs_main}, __doc__)


if __name__ == "__main__":
    sys.exit(main())
