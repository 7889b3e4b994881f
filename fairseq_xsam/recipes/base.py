"""What the recipes (``recipes/iwslt14_de_en``, ``recipes/multi30k_de_en``) share: fairseq
commands and hydra configs built from one table of settings, the run layout
(``RUNS/<LABEL>-seed<SEED>/{command.txt,train.log,timing.json,checkpoints/,eval/}``), resuming
and skipping finished runs, ``fairseq-generate`` with a check that every test sentence was
translated, sacreBLEU scoring, checkpoint averaging, SentencePiece and ``fairseq-preprocess``.

Each recipe module (:mod:`.multi30k`, :mod:`.iwslt14`) holds its table and its options and
calls these functions; nothing here knows a data set. Logs are read by
:mod:`fairseq_xsam.report.logs`.
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
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..report import run_record
from ..report.logs import log_timing

#: the repository (this package is installed from it in place: pip install -e)
ROOT = Path(__file__).resolve().parents[2]
USER_DIR = ROOT / "fairseq_xsam"  # fairseq's --user-dir: the same absolute path as before
OPTIMIZERS = ("adamw", "sam", "xsam", "fixed", "msam", "msam+", "lsam", "lsam+")
# The rows every recipe's table shares for SAM/XSAM: the paper's IWSLT14 settings (Chen & Zhou,
# ICLR 2026, appendix D.3: rho 0.15, rho' = 3 rho); "xsam" rows apply to every OPT but adamw,
# "xsam-search" to OPT xsam only (the other variants do not search alpha).
XSAM_ROWS = [
    ("optimizer", "_name", "xsam_adamw", "xsam"),
    ("optimizer", "rho", 0.15, "xsam"),
    ("optimizer", "probe_rho", 0.45, "xsam"),
    ("optimizer", "sam_variant", "<OPT>", "xsam"),
    ("optimizer", "alpha_search", "epoch", "xsam-search"),
]
NAME_FLAGS = {"task": "--task", "model": "--arch", "optimizer": "--optimizer",
              "lr_scheduler": "--lr-scheduler", "criterion": "--criterion"}
CONST_FLAGS = {("task", "eval_bleu_remove_bpe"): "@@ "}  # flags whose bare form means this value
Settings = List[Tuple[str, str, object]]


# ----------------------------------------------------------------------------- settings

def select_rows(table, opt: str, skip: Callable[[str], bool] = lambda source: False
                ) -> Dict[Tuple[str, str], object]:
    """{(group, field): value} of the table's rows for OPT, in table order. Rows whose source is
    "xsam" apply to every OPT but adamw, "xsam-search" to OPT xsam only; ``skip(source)`` drops
    more; a later row of the same field replaces an earlier one; "<OPT>" is replaced by OPT."""
    if opt not in OPTIMIZERS:
        raise ValueError(f"Invalid OPT value: {opt!r} (allowed: {', '.join(OPTIMIZERS)})")
    out: Dict[Tuple[str, str], object] = {}
    for group, key, value, source in table:
        if source in ("xsam", "xsam-search") and opt == "adamw":
            continue
        if (source == "xsam-search" and opt != "xsam") or skip(source):
            continue
        out[(group, key)] = opt if value == "<OPT>" else value
    return out


def apply_overrides(table: Dict[Tuple[str, str], object], opt: str,
                    over: Dict[Tuple[str, str], object]) -> None:
    """Sets the given (group, field) values that are not None; an optimizer field for adamw is a
    ValueError naming the option."""
    for (group, key), value in over.items():
        if value is None:
            continue
        if group == "optimizer" and opt == "adamw":
            raise ValueError(f"--{key.replace('_', '-')} is an XSAM option: it does not apply to "
                             f"OPT adamw (allowed: {', '.join(OPTIMIZERS[1:])})")
        table[(group, key)] = value


def _number(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def to_flags(settings: Settings) -> List[str]:
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


def to_hydra(settings: Settings) -> Dict[str, Dict[str, object]]:
    """The hydra config ({group: {field: value}}) for the settings."""
    cfg: Dict[str, Dict[str, object]] = {}
    for group, key, value in settings:
        cfg.setdefault(group, {})[key] = value
    return cfg


def render_yaml(settings: Settings, header: str) -> str:
    """A config for ``fairseq-hydra-train``: the settings, the plugin as user_dir (relative to
    the repository root unless FAIRSEQ_XSAM_USER_DIR is set) and a required task.data."""
    import yaml

    cfg = to_hydra(settings)
    cfg["common"] = {"user_dir": "${oc.env:FAIRSEQ_XSAM_USER_DIR,fairseq_xsam}",
                     **cfg["common"]}
    cfg["task"] = {"_name": cfg["task"].pop("_name"), "data": "???", **cfg["task"]}
    body = yaml.safe_dump({"hydra": {"run": {"dir": "."}}, **cfg}, sort_keys=False,
                          default_flow_style=False, allow_unicode=True)
    return header + body


def yaml_header(title: str, recipe: str, opt: str, data: str, preset: str = "") -> str:
    """The comment block on top of a recipe's config/<OPT>.yaml."""
    header = (f"# {title}, OPT={opt}: the run of `recipes/{recipe}/train.sh {opt}` "
              f"({preset}GPU, seed 1).\n# Generated by `recipe.py configs` from recipe.py's "
              "table; edit the table, not this file.\n"
              "# Run from the repository root (or set FAIRSEQ_XSAM_USER_DIR):\n"
              f"#   fairseq-hydra-train --config-dir recipes/{recipe}/config --config-name "
              f"{opt} \\\n#     task.data={data} checkpoint.save_dir=runs/{opt}/checkpoints\n")
    if opt == "fixed":
        header += "# OPT fixed needs alpha: add +optimizer.alpha=A (0 <= A <= 2).\n"
    return header


def dispatch(argv: Optional[Sequence[str]], commands: Dict[str, Callable], doc: str) -> int:
    """``recipe.py COMMAND ...``: runs the command, or prints the module's doc (exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in commands:
        print(doc)
        return 2
    return commands[argv[0]](argv[1:])


def configs_main(argv: Sequence[str], config_dir: Path, render: Callable[[str], str],
                 prog: str) -> int:
    """``recipe.py configs [--check]``: writes config/<OPT>.yaml, or fails naming the stale
    ones."""
    p = argparse.ArgumentParser(prog=f"{prog} configs")
    p.add_argument("--check", action="store_true", help="fail if a config file is out of date")
    args = p.parse_args(argv)
    stale = []
    for opt in OPTIMIZERS:
        path = config_dir / f"{opt}.yaml"
        text = render(opt)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            config_dir.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        raise SystemExit(f"out of date (run {prog} configs): " + ", ".join(stale))
    return 0


# ----------------------------------------------------------------------------- commands

def train_command(settings: Settings, data, save_dir, extra: Sequence[str] = (),
                  python: str = sys.executable) -> List[str]:
    return [python, "-m", "fairseq_cli.train", str(data), "--user-dir", str(USER_DIR),
            *to_flags(settings), "--save-dir", str(save_dir), *extra]


def generate_command(data, checkpoint, results, *, batch_size: Optional[int] = 128,
                     max_tokens: Optional[int] = None, beam: int = 5, cpu: bool = False,
                     subset: str = "test", remove_bpe: Optional[str] = None,
                     options: Sequence[str] = (), extra: Sequence[str] = (),
                     python: str = sys.executable) -> List[str]:
    """fairseq-generate over the whole subset: ``--required-batch-size-multiple 1`` (the default
    8 silently drops sentences, fairseq issue #5036)."""
    size = (["--batch-size", str(batch_size)] if batch_size else []) + \
        (["--max-tokens", str(max_tokens)] if max_tokens else [])
    return [python, "-m", "fairseq_cli.generate", str(data), "--user-dir", str(USER_DIR),
            "--path", str(checkpoint), "--gen-subset", subset, "--beam", str(beam), *size,
            "--remove-bpe", *([remove_bpe] if remove_bpe else []),
            "--required-batch-size-multiple", "1", "--results-path", str(results),
            *(["--cpu"] if cpu else []), *options, *extra]


def run_dir(runs, label: str, seed: int) -> Path:
    return Path(runs) / f"{label}-seed{seed}"


def shell_join(command: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in command)


def run_tee(command: Sequence[str], log: Path, env: Optional[dict] = None,
            echo: bool = True) -> int:
    """Runs the command with stdout+stderr appended to ``log`` (and echoed live)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "a", buffering=1) as out:
        proc = subprocess.Popen(list(map(str, command)), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
        for line in proc.stdout:
            out.write(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
        return proc.wait()


def run_training(run: Path, command: Sequence[str], prog: str, env: Optional[dict] = None,
                 echo: bool = True, record: Optional[dict] = None) -> dict:
    """Trains into ``run`` (``RUN/command.txt``, ``train.log``, ``checkpoints/``), resuming from
    ``checkpoint_last.pt`` when the run was interrupted, and skipping it when ``timing.json``
    says that it finished. A run directory holding another command is refused. Returns the
    timing: wall-clock of every session (seconds), the updates, the seconds spent in training
    steps and updates per second of training (:func:`fairseq_xsam.report.logs.log_timing`);
    ``record`` (:mod:`fairseq_xsam.report.run_record`) becomes ``RUN/run.json``."""
    line = shell_join(command)
    cmd_file, timing_file = run / "command.txt", run / "timing.json"
    if cmd_file.exists() and cmd_file.read_text().strip() != line:
        raise SystemExit(f"{prog}: {run} already holds a run with a different command "
                         f"(see {cmd_file}); choose another --runs folder or label, or remove it")
    if record is not None:  # RUN/run.json: the run's settings, written once
        run_record.write(run, record)
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {"sessions": []}
    if timing.get("finished"):
        print(f"{prog}: {run} has finished (timing.json); nothing to do", flush=True)
        return timing
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    cmd_file.write_text(line + "\n")
    resume = (run / "checkpoints" / "checkpoint_last.pt").exists()
    print(f"{prog}: {line}\n{prog}: {'resuming, ' if resume else ''}log {run / 'train.log'}",
          flush=True)
    start = time.time()
    rc = run_tee(command, run / "train.log", env=env, echo=echo)
    timing["sessions"].append({"started": time.strftime("%Y-%m-%d %H:%M:%S",
                                                        time.localtime(start)),
                               "wall_s": round(time.time() - start, 1), "exit_status": rc})
    # the cost from the log: the wall-clock also counts processes killed with their session
    # (they never got to write their entry above)
    found = log_timing((run / "train.log").read_text(encoding="utf-8", errors="replace"))
    if found["wall_s"] is None:
        found["wall_s"] = sum(s["wall_s"] for s in timing["sessions"])
    timing.update(finished=rc == 0, **found)
    timing["wall_s"] = round(timing["wall_s"], 1)
    if timing["updates_per_s"]:
        timing["updates_per_s"] = round(timing["updates_per_s"], 3)
    timing_file.write_text(json.dumps(timing, indent=2) + "\n")
    if rc != 0:
        raise SystemExit(f"{prog}: fairseq-train failed with exit status {rc} "
                         f"(see {run / 'train.log'}); run the same command again to resume")
    return timing


def run_data(run: Path) -> Optional[str]:
    """The data folder the run trained on (its run.json), None without one."""
    rec = run_record.read(run)
    return rec["data"] if rec else None


def parse_evaluate_args(parser: argparse.ArgumentParser, argv: Sequence[str]):
    """(options, arguments after --, run, checkpoint folder, checkpoint) of an evaluate command
    line whose first argument (dest ``checkpoint``) is a run directory or a checkpoint file."""
    own, extra = split_extra(argv)
    args = parser.parse_args(own)
    resolved = resolve_checkpoint(Path(args.checkpoint), args.dry_run)
    if resolved is None:
        parser.error(f"argument {parser._positionals._group_actions[0].metavar}: "
                     f"{args.checkpoint} is neither a checkpoint file nor a run directory")
    return (args, extra, *resolved)


def resolve_checkpoint(target: Path, dry_run: bool = False) -> Tuple[Path, Path, Path]:
    """(run, checkpoint folder, checkpoint) for a run directory (its checkpoint_best.pt) or a
    checkpoint file; None if it is neither."""
    if target.is_dir():
        return target, target / "checkpoints", target / "checkpoints" / "checkpoint_best.pt"
    if target.is_file() or dry_run:
        ckpt_dir = target.parent
        return (ckpt_dir.parent if ckpt_dir.name == "checkpoints" else ckpt_dir), ckpt_dir, target
    return None


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


# ----------------------------------------------------------------------------- generate, BLEU

def parse_generate(text: str) -> dict:
    """Hypotheses (H-, as fairseq scores them), detokenized hypotheses (D-), references (T-), by
    sentence id, and the 'BLEU4 = x' score of fairseq-generate."""
    hyps, detok, refs = {}, {}, {}
    bleu = None
    for line in text.splitlines():
        if line.startswith(("H-", "D-")):
            sid, _score, *hyp = line.split("\t")
            (hyps if line[0] == "H" else detok)[int(sid[2:])] = hyp[0] if hyp else ""
        elif line.startswith("T-"):
            sid, *ref = line.split("\t")
            refs[int(sid[2:])] = ref[0] if ref else ""
        m = re.search(r"Generate \S+ with beam=\d+: BLEU4? = ([0-9.]+)", line)
        if m:
            bleu = float(m.group(1))
    return {"hyps": hyps, "detok": detok, "refs": refs, "bleu": bleu}


def check_complete(parsed: dict, expected: int, prog: str = "evaluate.sh",
                   what: str = "test") -> List[int]:
    """The sentence ids 0..expected-1, or SystemExit if any hypothesis, reference or the BLEU
    line is missing (fairseq's --required-batch-size-multiple > 1 silently drops sentences)."""
    ids = sorted(parsed["hyps"])
    if ids != list(range(expected)) or sorted(parsed["refs"]) != ids:
        raise SystemExit(f"{prog}: fairseq-generate translated {len(ids)} of {expected} "
                         f"{what} sentences ({len(parsed['refs'])} references): the BLEU would "
                         f"not cover the whole {what} set")
    if parsed["bleu"] is None:
        raise SystemExit(f"{prog}: no 'BLEU4 = ...' line in the fairseq-generate output")
    return ids


def sacrebleu_score(hyps: List[str], refs: List[str], lowercase: bool = False):
    """(score, signature) of sacreBLEU's corpus BLEU with its default settings (13a)."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(lowercase=lowercase)
    score = metric.corpus_score(hyps, [refs])
    return score.score, str(metric.get_signature())


def dataset_size(data, subset: str, src: str, tgt: str) -> int:
    """Sentences in the binarized ``subset`` (its target side)."""
    from fairseq.data import data_utils

    prefix = os.path.join(str(data), f"{subset}.{src}-{tgt}.{tgt}")
    dataset = data_utils.load_indexed_dataset(prefix, None)
    if dataset is None:
        raise SystemExit(f"--data {data}: no binarized {subset} set {prefix}.bin/.idx")
    return len(dataset)


# ----------------------------------------------------------------------------- data

def train_sentencepiece(train_path, model_prefix, vocab_size, workers=1):
    """A joint SentencePiece BPE model on ``train_path`` (identity normalisation: decoding gives
    back the raw text); RuntimeError/OSError from SentencePiece are re-raised as ValueError."""
    import sentencepiece as spm

    try:
        spm.SentencePieceTrainer.train(
            input=train_path, model_prefix=model_prefix, vocab_size=vocab_size,
            model_type="bpe", character_coverage=1.0, normalization_rule_name="identity",
            num_threads=max(1, workers), minloglevel=2)
    except (RuntimeError, OSError) as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise ValueError(f"sentencepiece training failed (try a smaller vocabulary): {msg}"
                         ) from None
    return model_prefix + ".model"


def encode_sentencepiece(model_path, lines: Sequence[str]) -> List[str]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    return [" ".join(p) for p in sp.encode(list(lines), out_type=str)]


def preprocess_command(src: str, tgt: str, trainpref, validpref, testprefs: Sequence,
                       destdir, workers: int = 1, joined: bool = False,
                       python: str = sys.executable) -> List[str]:
    """fairseq-preprocess; several test prefixes become the subsets test, test1, test2, ..."""
    return [python, "-m", "fairseq_cli.preprocess", "--source-lang", src, "--target-lang", tgt,
            "--trainpref", str(trainpref), "--validpref", str(validpref),
            "--testpref", ",".join(map(str, testprefs)), "--destdir", str(destdir),
            "--workers", str(workers), *(["--joined-dictionary"] if joined else [])]


# ----------------------------------------------------------------------------- CLI helpers

def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} (allowed: a number > 0)") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} (allowed: a number > 0)")
    return value


def int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text} (allowed: an integer >= {low})") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} (allowed: an integer >= {low})")
        return value
    return parse


def split_extra(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(own arguments, arguments after --)."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def check_alpha_options(parser, opt: str, alpha, alpha_search, extra: Sequence[str] = ()
                        ) -> None:
    """The shared rules of --alpha and --alpha-search (parser.error on a violation). The largest
    alpha allowed is the settings' (fairseq_xsam.settings): --alpha-max, or 2 + --alpha-expand-
    probes x --alpha-step under --alpha-max auto, as given to fairseq-train in ``extra`` (the
    arguments after --; the last of a flag wins, as in fairseq-train). Grid options fairseq-train
    would refuse are left to it: alpha is then only checked to be >= 0."""
    from fairseq_xsam import settings

    grid = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for name in ("alpha_max", "alpha_step", "alpha_expand_probes"):
        grid.add_argument(settings.option_name(name, "cli"), dest=name)
    try:
        given = {k: v for k, v in vars(grid.parse_known_args(list(extra))[0]).items()
                 if v is not None}
        limit = settings.largest_allowed_alpha(given)
    except (argparse.ArgumentError, ValueError):
        limit = None
    top = "" if limit is None else f" <= {limit:g}"
    if opt == "fixed" and alpha is None:
        parser.error(f"OPT fixed needs --alpha A (0 <= A{top}): the fixed interpolation factor")
    if alpha_search is not None:
        try:
            settings.search_schedule(alpha_search)
        except ValueError:
            parser.error(f"argument --alpha-search: {alpha_search!r} (allowed: 'epoch', 'never' "
                         "or an integer N >= 0 = every N updates)")
    if alpha_search is not None and opt != "xsam":
        parser.error(f"--alpha-search applies to OPT xsam only (got OPT {opt})")
    if alpha is not None and not (0 <= alpha and (limit is None or alpha <= limit)):
        parser.error(f"argument --alpha: {alpha} (allowed: 0 <= alpha{top})")


def require_cuda(prog: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"{prog}: no CUDA GPU found (pass --cpu to run on the CPU)")
