#!/usr/bin/env python3
"""CPU demo: AdamW vs XSAM-AdamW on Multi30k German->English, end to end with fairseq.

Steps (outputs under ``work/demo/`` unless ``--out``):

1. unpack ``data/multi30k/*.gz`` (train 29,000 pairs, val 1,014, test_2016_flickr 1,000);
2. train one joint SentencePiece BPE model on train de+en and encode every split;
3. ``fairseq-preprocess`` with a joined dictionary;
4. train the same small transformer twice, same seed and settings: ``--optimizer adam``
   (decoupled weight decay, i.e. AdamW; label "adamw") and ``--optimizer xsam_adamw``
   (rho 0.15, probe-rho 0.45, alpha searched at the first update of every epoch; label "xsam");
5. ``fairseq-generate`` on test_2016_flickr with the last checkpoint (beam 5, at most
   1.2 x source + 10 tokens), sacreBLEU against the raw, cased references;
6. the comparison report of ``scripts/compare_bleu.py``: ``report.md`` (BLEU table, alpha
   searches, the exact commands, this run's timings), ``valid_loss.png``, ``bleu.png`` and
   ``alpha.png``. Each run is kept as ``runs/<label>-seed1/`` ({command.txt, train.log,
   checkpoints/, eval/{generate-test.txt, hyp.en, bleu.json}}), the layout of the IWSLT14
   recipes, so ``compare_bleu.py`` can also combine demo runs of several seeds.

``--quick`` runs a tiny configuration (2,000 training pairs, one epoch, a tiny model) that
checks the whole pipeline in about a minute; its BLEU means nothing.
"""

import argparse
import gzip
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import compare_bleu  # noqa: E402  (scripts/compare_bleu.py: the report and its plots)
DATA = ROOT / "data" / "multi30k"
SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}  # ours: Multi30k's
SRC, TGT = "de", "en"
LABELS = {"adamw": "adam", "xsam": "xsam_adamw"}  # label -> fairseq --optimizer

# Model, optimisation and data settings, shared by both optimizers. "default" is sized so that
# both trainings, preprocessing and generation finish in under 15 minutes on 2 CPU cores
# (measured: about 11 minutes; XSAM takes about twice AdamW's time per update). With so few
# updates a small model, small batches, a high learning rate and little dropout learn fastest.
# Measured alternatives: embed 256 / ffn 512 for 2 epochs (the same time) gave BLEU 28.8 with
# AdamW but 4.9 with XSAM; embed 256, dropout 0.3, lr 1e-3, 4096 tokens gave AdamW 10.2.
CONFIGS = {
    "default": dict(
        train_lines=None, epochs=3, vocab=6000,
        model=["--arch", "transformer", "--share-all-embeddings",
               "--encoder-layers", "3", "--decoder-layers", "3",
               "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
               "--encoder-ffn-embed-dim", "512", "--decoder-ffn-embed-dim", "512",
               "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
               "--dropout", "0.1"],
        lr="2e-3", warmup="200", max_tokens="2048", log_interval="25"),
    "quick": dict(
        train_lines=2000, epochs=1, vocab=1000,
        model=["--arch", "transformer", "--share-all-embeddings",
               "--encoder-layers", "1", "--decoder-layers", "1",
               "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
               "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
               "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
               "--dropout", "0.1"],
        lr="1e-3", warmup="20", max_tokens="2048", log_interval="5"),
}
XSAM_ARGS = ["--rho", "0.15", "--probe-rho", "0.45"]  # the package defaults, spelled out


def log(msg):
    print(f"[demo] {msg}", flush=True)


class Runner:
    """Runs commands with their output streamed to the terminal and to a log file."""

    def __init__(self, threads):
        self.commands = []  # (label, command line) for the report
        self.last_cpu = 0.0
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                        PYTHONUNBUFFERED="1")

    def __call__(self, label, cmd, log_path=None, echo=True):
        line = " ".join(shlex.quote(str(c)) for c in cmd)
        self.commands.append((label, line))
        log(f"$ {line}")
        start, cpu0 = time.time(), _children_cpu()
        out = []
        with subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=self.env, cwd=ROOT,
                              bufsize=1) as proc:
            for text in proc.stdout:
                out.append(text)
                if echo:
                    sys.stdout.write(text)
                    sys.stdout.flush()
        if log_path is not None:
            Path(log_path).write_text("".join(out))
        if proc.returncode != 0:
            if not echo:
                sys.stdout.write("".join(out[-40:]))
            raise SystemExit(f"[demo] failed ({proc.returncode}): {line}")
        # CPU seconds of the command (all threads), beside wall-clock
        self.last_cpu = _children_cpu() - cpu0
        return "".join(out), time.time() - start


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fairseq_cmd(tool):
    return [sys.executable, "-m", f"fairseq_cli.{tool}"]


def unpack(raw, train_lines):
    raw.mkdir(parents=True)
    for ours, theirs in SPLITS.items():
        for lang in (SRC, TGT):
            with gzip.open(DATA / f"{theirs}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = f.read().splitlines()
            if ours == "train" and train_lines:
                lines = lines[:train_lines]
            (raw / f"{ours}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    n = {s: len((raw / f"{s}.{SRC}").read_text(encoding="utf-8").splitlines()) for s in SPLITS}
    log(f"unpacked Multi30k task 1: {n}")


def sentencepiece(raw, spm_dir, vocab, threads):
    import sentencepiece as spm

    spm_dir.mkdir(parents=True)
    prefix = spm_dir / "spm"
    spm.SentencePieceTrainer.train(
        input=f"{raw / f'train.{SRC}'},{raw / f'train.{TGT}'}", model_prefix=str(prefix),
        vocab_size=vocab, model_type="bpe", character_coverage=1.0, num_threads=threads,
        bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=f"{prefix}.model")
    for split in SPLITS:
        for lang in (SRC, TGT):
            lines = (raw / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            pieces = sp.encode(lines, out_type=str)
            (spm_dir / f"{split}.{lang}").write_text(
                "".join(" ".join(p) + "\n" for p in pieces), encoding="utf-8")
    log(f"SentencePiece BPE, joint vocabulary {vocab}: {prefix}.model")
    return f"SentencePieceTrainer.train(input=train.{SRC},train.{TGT}, vocab_size={vocab}, " \
           "model_type=bpe, character_coverage=1.0)"


def generate(run, bin_dir, ckpt, out_txt, refs, cfg_max_tokens):
    text, secs = run("generate", fairseq_cmd("generate") + [
        bin_dir, "--user-dir", ROOT / "fairseq_xsam", "--path", ckpt, "--gen-subset", "test",
        "--source-lang", SRC, "--target-lang", TGT, "--cpu",
        "--beam", "5", "--max-tokens", cfg_max_tokens, "--required-batch-size-multiple", "1",
        "--max-len-a", "1.2", "--max-len-b", "10",
        "--remove-bpe", "sentencepiece", "--seed", "1"], log_path=out_txt, echo=False)
    hyps = {}
    for m in re.finditer(r"^D-(\d+)\t[^\t]*\t(.*)$", text, flags=re.M):
        hyps[int(m.group(1))] = m.group(2)
    if len(hyps) != len(refs) or sorted(hyps) != list(range(len(refs))):
        raise SystemExit(f"[demo] {out_txt}: {len(hyps)} hypotheses for {len(refs)} references")
    tail = [l for l in text.splitlines() if "Translated" in l or "Generate test" in l]
    for l in tail:
        print(l, flush=True)
    bleu4 = re.search(r"BLEU4 = ([\d.]+)", text)
    if bleu4 is None:
        raise SystemExit(f"[demo] {out_txt}: fairseq-generate printed no BLEU4 line")
    return [hyps[i] for i in range(len(refs))], float(bleu4.group(1)), secs


def details(args, cfg, results, total):
    """The demo's own section of report.md: configuration, machine and timings."""
    lines = ["", "## This demo run", "",
             f"Configuration: {'quick' if args.quick else 'default'}, {cfg['epochs']} epoch(s), "
             f"{args.threads} torch thread(s), train pairs: {cfg['train_lines'] or 29000}, "
             f"SentencePiece joint BPE vocabulary {cfg['vocab']}. Test set: Multi30k "
             "test_2016_flickr (1,000 sentences), beam 5; the last checkpoint of each run (the "
             "same number of updates for both).",
             f"Machine: {os.cpu_count()} CPU core(s), {platform.processor() or platform.machine()};"
             " CPU time is user + system time of the command, all threads (about "
             f"{args.threads}x wall-clock on an idle machine); other load inflates both.", "",
             "| optimizer | wall-clock (train) | CPU time (train) | wall-clock (generate) |",
             "|---|---|---|---|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['train_s']:.0f} s | {r['train_cpu']:.0f} s | "
                     f"{r['gen_s']:.0f} s |")
    lines += ["", f"Total demo wall-clock: {total:.0f} s.", ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny configuration to check the pipeline (about a minute)")
    p.add_argument("--epochs", type=int, help="epochs per optimizer (default: 3; quick: 1)")
    p.add_argument("--out", type=Path,
                   help="output folder (default: work/demo, quick: work/demo-quick)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    args = p.parse_args()
    t0 = time.time()
    cfg = dict(CONFIGS["quick" if args.quick else "default"])
    if args.epochs is not None:
        if args.epochs < 1:
            p.error(f"--epochs must be >= 1, got {args.epochs}")
        cfg["epochs"] = args.epochs
    out = (args.out or ROOT / "work" / ("demo-quick" if args.quick else "demo")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    raw, spm_dir, bin_dir = out / "raw", out / "spm", out / "data-bin"
    for d in [raw, spm_dir, bin_dir, out / "runs"]:
        if d.exists():
            shutil.rmtree(d)  # a fresh start: fairseq would resume from an old checkpoint
    run = Runner(args.threads)

    log(f"output: {out}")
    unpack(raw, cfg["train_lines"])
    run.commands.append(("spm", sentencepiece(raw, spm_dir, cfg["vocab"], args.threads)))
    run("preprocess", fairseq_cmd("preprocess") + [
        "--source-lang", SRC, "--target-lang", TGT, "--joined-dictionary",
        "--trainpref", spm_dir / "train", "--validpref", spm_dir / "valid",
        "--testpref", spm_dir / "test", "--destdir", bin_dir, "--workers", str(args.threads)],
        log_path=out / "preprocess.log", echo=False)
    log(f"binarised: {bin_dir}")

    refs = (raw / f"test.{TGT}").read_text(encoding="utf-8").splitlines()
    from sacrebleu.metrics import BLEU

    results, runs = {}, []
    for label, optimizer in LABELS.items():
        run_dir = out / "runs" / f"{label}-seed1"  # the layout of recipes/ and compare_bleu.py
        (run_dir / "eval").mkdir(parents=True)
        save = run_dir / "checkpoints"
        cmd = fairseq_cmd("train") + [
            bin_dir, "--user-dir", ROOT / "fairseq_xsam", "--task", "translation",
            "--source-lang", SRC, "--target-lang", TGT, "--cpu", "--seed", "1",
            *cfg["model"],
            "--optimizer", optimizer, "--adam-betas", "(0.9, 0.98)", "--weight-decay", "0.0001",
            *(XSAM_ARGS if label == "xsam" else []),
            "--lr", cfg["lr"], "--lr-scheduler", "inverse_sqrt", "--warmup-updates",
            cfg["warmup"], "--warmup-init-lr", "1e-07",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
            "--max-tokens", cfg["max_tokens"], "--max-epoch", str(cfg["epochs"]),
            "--save-dir", save, "--no-epoch-checkpoints", "--num-workers", "0",
            "--log-format", "simple", "--log-interval", cfg["log_interval"]]
        (run_dir / "command.txt").write_text(shlex.join(map(str, cmd)) + "\n")
        log(f"training {label} (--optimizer {optimizer}), {cfg['epochs']} epoch(s)")
        text, train_s = run(f"train {label}", cmd, log_path=run_dir / "train.log")
        train_cpu = run.last_cpu
        updates = compare_bleu.parse_train_log(text)["updates"]
        log(f"{label}: {updates} updates in {train_s:.0f} s ({train_cpu:.0f} CPU s)")
        hyp_path = run_dir / "eval" / f"hyp.{TGT}"
        hyps, bleu4, gen_s = generate(run, bin_dir, save / "checkpoint_last.pt",
                                      run_dir / "eval" / "generate-test.txt", refs,
                                      cfg["max_tokens"])
        hyp_path.write_text("\n".join(hyps) + "\n", encoding="utf-8")
        bleu = BLEU()
        score = bleu.corpus_score(hyps, [refs])
        score_cmd = f"sacrebleu {raw / f'test.{TGT}'} -i {hyp_path}"
        (run_dir / "eval" / "bleu.json").write_text(json.dumps(dict(
            tokenized_bleu=bleu4, sacrebleu=round(score.score, 2),
            sacrebleu_signature=str(bleu.get_signature()), hypotheses=len(hyps),
            references=len(refs), checkpoint=str(save / "checkpoint_last.pt"),
            command=run.commands[-1][1] + "\n" + score_cmd), indent=1) + "\n")
        log(f"{label}: {score}  ({len(hyps)} hypotheses, generate {gen_s:.0f} s)")
        results[label] = dict(bleu=score.score, bleu4=bleu4, updates=updates, train_s=train_s,
                              train_cpu=train_cpu, gen_s=gen_s)
        runs.append(compare_bleu.load_run(run_dir, allow_missing=False))

    compare_bleu.report(
        runs, out, "CPU demo: AdamW vs XSAM-AdamW on Multi30k de-en", None,
        scoring="sacreBLEU scores the detokenized (SentencePiece-decoded) output against the "
                "raw, cased Multi30k references (signature below); tokenized BLEU is "
                "fairseq-generate's `BLEU4` on the same output (beam 5, whole test set).")
    total = time.time() - t0
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write(details(args, cfg, results, total))
    for label, r in results.items():
        log(f"{label:6s} sacreBLEU {r['bleu']:6.2f}  fairseq BLEU4 {r['bleu4']:6.2f}  "
            f"train {r['train_s']:.0f} s ({r['train_cpu']:.0f} CPU s)  updates {r['updates']}")
    log(f"report: {out / 'report.md'}, plots: {', '.join(p.name for p in out.glob('*.png'))}")
    log(f"total wall-clock: {total:.0f} s")

if __name__ == "__main__":
    main()
