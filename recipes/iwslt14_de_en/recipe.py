#!/usr/bin/env python3
"""IWSLT'14 German->English with fairseq: train AdamW / SAM / XSAM (and the paper's baselines),
evaluate with tokenized BLEU and sacreBLEU. ``train.sh`` and ``evaluate.sh`` call this file.

Subcommands (``--help`` on each lists every option):

``train OPT [SEED]``  OPT in adamw | sam | xsam | fixed | msam | msam+ | lsam | lsam+.
    adamw = ``--optimizer adam`` (fairseq's Adam with decoupled weight decay); the others
    ``--optimizer xsam_adamw --sam-variant OPT`` (rho 0.15, probe-rho 0.45; xsam searches alpha
    at the first update of every epoch). Writes ``RUNS/<OPT>-seed<SEED>/``: ``command.txt`` (the
    exact command), ``train.log`` (fairseq's stdout+stderr, also shown live), ``checkpoints/``.
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
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import prepare  # noqa: E402  (prepare.py next to this file: the test set's files and clean-up)
USER_DIR = ROOT / "fairseq_xsam"
CONFIG_DIR = HERE / "config"
DEFAULT_DATA = "data-bin/iwslt14.tokenized.de-en"
DEFAULT_RUNS = "runs/iwslt14_de_en"
OPTIMIZERS = ("adamw", "sam", "xsam", "fixed", "msam", "msam+", "lsam", "lsam+")
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
    # the paper's SAM/XSAM settings for IWSLT14 (Chen & Zhou, ICLR 2026, appendix D.3)
    ("optimizer", "_name", "xsam_adamw", "xsam"),
    ("optimizer", "rho", 0.15, "xsam"),
    ("optimizer", "probe_rho", 0.45, "xsam"),
    ("optimizer", "sam_variant", "<OPT>", "xsam"),
    ("optimizer", "alpha_search", "epoch", "xsam-search"),  # only OPT=xsam searches alpha
    # this recipe (fairseq's README trains until stopped by hand)
    ("optimization", "max_epoch", 50, "recipe"),
    ("checkpoint", "keep_last_epochs", 10, "recipe"),
    ("common", "fp16", True, "recipe"),  # GPU default; --cpu or --no-fp16 turn it off
    ("common", "log_format", "simple", "recipe"),
    ("common", "log_interval", 100, "recipe"),
    ("common", "seed", 1, "recipe"),
]

NAME_FLAGS = {"task": "--task", "model": "--arch", "optimizer": "--optimizer",
              "lr_scheduler": "--lr-scheduler", "criterion": "--criterion"}
CONST_FLAGS = {("task", "eval_bleu_remove_bpe"): "@@ "}  # flags whose bare form means this value


# ----------------------------------------------------------------------------- settings

def train_settings(opt: str, *, seed: int = 1, rho: Optional[float] = None,
                   probe_rho: Optional[float] = None, alpha: Optional[float] = None,
                   ascent_steps: Optional[int] = None, alpha_search: Optional[str] = None,
                   max_epoch: Optional[int] = None, keep_last_epochs: Optional[int] = None,
                   fp16: bool = True, cpu: bool = False, eval_bleu: bool = True,
                   ) -> List[Tuple[str, str, object]]:
    """The ordered (group, field, value) settings of one run of ``train OPT``."""
    if opt not in OPTIMIZERS:
        raise ValueError(f"Invalid OPT value: {opt!r} (allowed: {', '.join(OPTIMIZERS)})")
    table: Dict[Tuple[str, str], object] = {}
    for group, key, value, source in HYPERPARAMETERS:
        if source in ("xsam", "xsam-search") and opt == "adamw":
            continue
        if source == "xsam-search" and opt != "xsam":
            continue
        if source == "eval_bleu" and not eval_bleu:
            continue
        table[(group, key)] = opt if value == "<OPT>" else value
    over = {("optimizer", "rho"): rho, ("optimizer", "probe_rho"): probe_rho,
            ("optimizer", "alpha"): alpha, ("optimizer", "ascent_steps"): ascent_steps,
            ("optimizer", "alpha_search"): alpha_search,
            ("optimization", "max_epoch"): max_epoch,
            ("checkpoint", "keep_last_epochs"): keep_last_epochs, ("common", "seed"): seed}
    for (group, key), value in over.items():
        if value is None:
            continue
        if group == "optimizer" and opt == "adamw":
            raise ValueError(f"--{key.replace('_', '-')} is an XSAM option: it does not apply to "
                             "OPT adamw (allowed: sam, xsam, fixed, msam, msam+, lsam, lsam+)")
        table[(group, key)] = value
    table[("common", "fp16")] = bool(fp16 and not cpu)
    if cpu:
        table[("common", "cpu")] = True
    return [(g, k, v) for (g, k), v in table.items()]


def _number(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def to_flags(settings) -> List[str]:
    """fairseq-train command-line flags for the settings (False booleans are left out)."""
    out: List[str] = []
    for group, key, value in settings:
        if key == "_name":
            out += [NAME_FLAGS[group], str(value)]
            continue
        flag = "--" + key.replace("_", "-")
        if CONST_FLAGS.get((group, key)) == value or value is True:
            out.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            out += [flag, ",".join(_number(v) for v in value)]
        else:
            out += [flag, _number(value)]
    return out


def to_hydra(settings) -> Dict[str, Dict[str, object]]:
    """The hydra config ({group: {field: value}}) for the settings."""
    cfg: Dict[str, Dict[str, object]] = {}
    for group, key, value in settings:
        cfg.setdefault(group, {})[key] = value
    return cfg


# ----------------------------------------------------------------------------- commands

def train_command(opt: str, seed: int, data: str, save_dir: str, extra: Sequence[str] = (),
                  python: str = sys.executable, **options) -> List[str]:
    settings = train_settings(opt, seed=seed, **options)
    return [python, "-m", "fairseq_cli.train", str(data), "--user-dir", str(USER_DIR),
            *to_flags(settings), "--save-dir", str(save_dir), *extra]


def generate_command(data: str, checkpoint: str, results: str, *, batch_size: int = 128,
                     beam: int = 5, cpu: bool = False, subset: str = "test",
                     extra: Sequence[str] = (), python: str = sys.executable) -> List[str]:
    return [python, "-m", "fairseq_cli.generate", str(data), "--user-dir", str(USER_DIR),
            "--path", str(checkpoint), "--gen-subset", subset, "--beam", str(beam),
            "--batch-size", str(batch_size), "--remove-bpe", "--required-batch-size-multiple", "1",
            "--results-path", str(results), *(["--cpu"] if cpu else []), *extra]


def run_dir(runs: str, opt: str, seed: int) -> Path:
    return Path(runs) / f"{opt}-seed{seed}"


def shell_join(command: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in command)


def run_tee(command: Sequence[str], log: Path, env: Optional[dict] = None) -> int:
    """Runs the command with stdout+stderr appended to ``log`` and echoed live."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "a", buffering=1) as out:
        proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, bufsize=1)
        for line in proc.stdout:
            out.write(line)
            sys.stdout.write(line)
            sys.stdout.flush()
        return proc.wait()


# ----------------------------------------------------------------------------- checkpoints

def last_epoch_checkpoints(folder, n: int) -> List[Path]:
    """The n checkpoints ``checkpoint<EPOCH>.pt`` of the highest epochs, newest first."""
    found = []
    for path in Path(folder).iterdir():
        m = re.fullmatch(r"checkpoint(\d+)\.pt", path.name)
        if m:
            found.append((int(m.group(1)), path))
    if len(found) < n:
        raise SystemExit(f"--average-last {n}: {folder} holds {len(found)} epoch checkpoints "
                         f"(checkpoint<N>.pt); need at least {n}")
    return [p for _, p in sorted(found, reverse=True)[:n]]


def average_checkpoints(paths: Sequence, output) -> Path:
    """Averages the model weights of the checkpoints like fairseq's
    ``scripts/average_checkpoints.py`` (which the fairseq-fixed wheel does not ship): the other
    entries come from the first checkpoint; sums are taken in float64 and cast back to each
    tensor's dtype; integer tensors (buffers) are floor-divided. Each file is read with torch's
    safe loader (fairseq's types allowed; anything else is refused before any of it runs)."""
    import torch

    from fairseq_xsam.fairseq.checkpoints import load

    state, sums, keys = None, {}, None
    for path in paths:
        loaded = load(path)
        model = loaded["model"]
        if keys is None:
            state, keys = loaded, list(model)
        elif list(model) != keys:
            raise SystemExit(f"{path}: its parameters differ from those of {paths[0]}")
        for key in keys:
            t = model[key]
            acc = t.detach().to(torch.float64 if t.is_floating_point() else torch.int64)
            sums[key] = acc.clone() if key not in sums else sums[key] + acc
    n = len(paths)
    state["model"] = {k: ((s / n) if state["model"][k].is_floating_point()
                          else torch.div(s, n, rounding_mode="floor")).to(state["model"][k].dtype)
                      for k, s in sums.items()}
    output = Path(output)
    torch.save(state, output)
    return output


# ----------------------------------------------------------------------------- parsing

def parse_generate(text: str) -> dict:
    """Hypotheses, references (by sentence id) and the 'BLEU4 = x' score of fairseq-generate."""
    hyps, refs = {}, {}
    bleu = None
    for line in text.splitlines():
        if line.startswith("H-"):
            sid, _score, *hyp = line.split("\t")
            hyps[int(sid[2:])] = hyp[0] if hyp else ""
        elif line.startswith("T-"):
            sid, *ref = line.split("\t")
            refs[int(sid[2:])] = ref[0] if ref else ""
        m = re.search(r"Generate \S+ with beam=\d+: BLEU4? = ([0-9.]+)", line)
        if m:
            bleu = float(m.group(1))
    return {"hyps": hyps, "refs": refs, "bleu": bleu}


def check_complete(parsed: dict, expected: int) -> List[int]:
    """The sentence ids 0..expected-1, or SystemExit if any hypothesis, reference or the BLEU
    line is missing (fairseq's --required-batch-size-multiple > 1 silently drops sentences)."""
    ids = sorted(parsed["hyps"])
    if ids != list(range(expected)) or sorted(parsed["refs"]) != ids:
        raise SystemExit(f"evaluate.sh: fairseq-generate translated {len(ids)} of {expected} "
                         f"test sentences ({len(parsed['refs'])} references): the BLEU would "
                         "not cover the whole test set")
    if parsed["bleu"] is None:
        raise SystemExit("evaluate.sh: no 'BLEU4 = ...' line in the fairseq-generate output")
    return ids


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


def dataset_size(data: str, subset: str, src: str, tgt: str) -> int:
    from fairseq.data import data_utils

    prefix = os.path.join(data, f"{subset}.{src}-{tgt}.{tgt}")
    dataset = data_utils.load_indexed_dataset(prefix, None)
    if dataset is None:
        raise SystemExit(f"--data {data}: no binarized {subset} set {prefix}.bin/.idx")
    return len(dataset)


# ----------------------------------------------------------------------------- CLI: train

def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} (allowed: a number > 0)")
    return value


def _int_at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} (allowed: an integer >= {low})")
        return value
    return parse


def _split_extra(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


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
    own, extra = _split_extra(argv)
    parser = train_parser()
    args = parser.parse_args(own)
    if args.opt == "fixed" and args.alpha is None:
        parser.error("OPT fixed needs --alpha A (0 <= A <= 2): the fixed interpolation factor")
    if args.alpha_search is not None and not re.fullmatch(r"epoch|never|\d+", args.alpha_search):
        parser.error(f"argument --alpha-search: {args.alpha_search!r} (allowed: 'epoch', 'never' "
                     "or an integer N >= 0 = every N updates)")
    if args.alpha_search is not None and args.opt != "xsam":
        parser.error(f"--alpha-search applies to OPT xsam only (got OPT {args.opt})")
    if args.alpha is not None and not 0 <= args.alpha <= 2:
        parser.error(f"argument --alpha: {args.alpha} (allowed: 0 <= alpha <= 2)")
    keep = args.keep_last_epochs or 10
    if args.average_last and args.average_last > keep:
        parser.error(f"argument --average-last: {args.average_last} (allowed: <= "
                     f"--keep-last-epochs = {keep}, or raise --keep-last-epochs)")
    run = run_dir(args.runs, args.opt, args.seed)
    try:
        command = train_command(
            args.opt, args.seed, args.data, run / "checkpoints", extra,
            rho=args.rho, probe_rho=args.probe_rho, alpha=args.alpha,
            ascent_steps=args.ascent_steps, alpha_search=args.alpha_search,
            max_epoch=args.max_epoch, keep_last_epochs=args.keep_last_epochs,
            fp16=not args.no_fp16, cpu=args.cpu, eval_bleu=not args.no_eval_bleu)
    except ValueError as e:
        parser.error(str(e))
    line = shell_join(command)
    if args.dry_run:
        print(line)
        return 0
    if not args.cpu:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("train.sh: no CUDA GPU found (pass --cpu to train on the CPU)")
    if not Path(args.data).is_dir():
        raise SystemExit(f"train.sh: --data {args.data} is not a directory (binarize IWSLT14 "
                         "with recipes/iwslt14_de_en/prepare.sh first)")
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    cmd_file = run / "command.txt"
    if cmd_file.exists() and cmd_file.read_text().strip() != line:
        raise SystemExit(f"train.sh: {run} already holds a run with a different command "
                         f"(see {cmd_file}); choose another --runs folder or remove it")
    cmd_file.write_text(line + "\n")
    print(f"train.sh: {line}\ntrain.sh: log {run / 'train.log'}", flush=True)
    rc = run_tee(command, run / "train.log")
    if rc != 0:
        raise SystemExit(f"train.sh: fairseq-train failed with exit status {rc} "
                         f"(see {run / 'train.log'})")
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
    p.add_argument("--data", help="binarized data (default: the data of the run's command.txt, "
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


def _data_from_command(run: Path) -> Optional[str]:
    f = run / "command.txt"
    if not f.exists():
        return None
    words = shlex.split(f.read_text())
    for i, w in enumerate(words[:-1]):
        if w in ("fairseq_cli.train", "fairseq-train") or w.endswith("/fairseq-train"):
            return words[i + 1]
    return None


def sacrebleu_score(hyps: List[str], refs: List[str], lowercase: bool):
    from sacrebleu.metrics import BLEU

    metric = BLEU(lowercase=lowercase)
    score = metric.corpus_score(hyps, [refs])
    return score.score, str(metric.get_signature())


def evaluate_main(argv: Sequence[str]) -> int:
    own, extra = _split_extra(argv)
    parser = evaluate_parser()
    args = parser.parse_args(own)
    target = Path(args.checkpoint)
    if target.is_dir():
        run, ckpt_dir = target, target / "checkpoints"
        checkpoint = ckpt_dir / "checkpoint_best.pt"
    elif target.is_file() or args.dry_run:
        checkpoint, ckpt_dir = target, target.parent
        run = ckpt_dir.parent if ckpt_dir.name == "checkpoints" else ckpt_dir
    else:
        parser.error(f"argument CKPT: {target} is neither a checkpoint file nor a run directory")
    if args.average_last:
        checkpoint = ckpt_dir / f"checkpoint_avg_last{args.average_last}.pt"
    data = args.data or _data_from_command(run) or os.environ.get("DATA", DEFAULT_DATA)
    out = Path(args.out) if args.out else run / "eval"
    command = generate_command(data, checkpoint, out, batch_size=args.batch_size,
                               beam=args.beam, cpu=args.cpu, extra=extra)
    if args.dry_run:
        print(shell_join(command))
        return 0
    if not args.cpu:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("evaluate.sh: no CUDA GPU found (pass --cpu to generate on the CPU)")
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
    rc = run_tee(command, out / "generate.log")
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
    import yaml

    settings = train_settings(opt)
    cfg = to_hydra(settings)
    cfg["common"] = {"user_dir": "${oc.env:FAIRSEQ_XSAM_USER_DIR,fairseq_xsam}",
                     **cfg["common"]}
    cfg["task"] = {"_name": cfg["task"].pop("_name"), "data": "???", **cfg["task"]}
    header = (f"# IWSLT'14 De-En, OPT={opt}: the run of `recipes/iwslt14_de_en/train.sh {opt}` "
              "(GPU, seed 1).\n# Generated by `recipe.py configs` from recipe.py's "
              "HYPERPARAMETERS; edit the table, not this file.\n"
              "# Run from the repository root (or set FAIRSEQ_XSAM_USER_DIR):\n"
              f"#   fairseq-hydra-train --config-dir recipes/iwslt14_de_en/config --config-name "
              f"{opt} \\\n#     task.data=data-bin/iwslt14.tokenized.de-en "
              f"checkpoint.save_dir=runs/{opt}/checkpoints\n")
    if opt == "fixed":
        header += "# OPT fixed needs alpha: add +optimizer.alpha=A (0 <= A <= 2).\n"
    body = yaml.safe_dump({"hydra": {"run": {"dir": "."}}, **cfg}, sort_keys=False,
                          default_flow_style=False, allow_unicode=True)
    return header + body


def configs_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="recipe.py configs")
    p.add_argument("--check", action="store_true", help="fail if a config file is out of date")
    args = p.parse_args(argv)
    stale = []
    for opt in OPTIMIZERS:
        path = CONFIG_DIR / f"{opt}.yaml"
        text = render_yaml(opt)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            CONFIG_DIR.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        raise SystemExit("out of date (run recipe.py configs): " + ", ".join(stale))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": train_main, "evaluate": evaluate_main, "configs": configs_main}
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
