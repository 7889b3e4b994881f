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
6. ``report.md`` (table, alpha searches, the exact commands) and ``valid_loss.png``.

``--quick`` runs a tiny configuration (2,000 training pairs, one epoch, a tiny model) that
checks the whole pipeline in about a minute; its BLEU means nothing.
"""

import argparse
import gzip
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


def parse_log(text):
    """Validation loss per epoch, the last train summary and XSAM's alpha searches."""
    valid = {}
    for m in re.finditer(r"\| valid \| epoch (\d+) \| valid on 'valid' subset \| (.*)", text):
        fields = dict(kv.split(" ", 1) for kv in m.group(2).split(" | ") if " " in kv)
        valid[int(m.group(1))] = {k: float(v) for k, v in fields.items()
                                  if re.fullmatch(r"-?[\d.]+(e-?\d+)?", v)}
    alphas = [(int(u), float(a)) for u, a in
              re.findall(r"XSAM alpha search at update (\d+): alpha=([\d.]+)", text)]
    updates = max((int(v) for v in re.findall(r"num_updates (\d+)", text)), default=0)
    return valid, alphas, updates


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
    return [hyps[i] for i in range(len(refs))], secs


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, r in results.items():
        epochs = sorted(r["valid"])
        ax.plot(epochs, [r["valid"][e]["loss"] for e in epochs], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss (label-smoothed, base 2)")
    ax.set_title("Multi30k de-en, validation set (val, 1,014 pairs)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(path, args, cfg, results, signature, commands, total):
    lines = [
        "# CPU demo: AdamW vs XSAM-AdamW on Multi30k de-en",
        "",
        f"Configuration: {'quick' if args.quick else 'default'}, {cfg['epochs']} epoch(s), "
        f"{args.threads} torch thread(s), train pairs: {cfg['train_lines'] or 29000}, "
        f"SentencePiece joint BPE vocabulary {cfg['vocab']}.",
        f"Machine: {os.cpu_count()} CPU core(s), {platform.processor() or platform.machine()}; "
        "CPU time is user + system time of the command, all threads (about "
        f"{args.threads}x wall-clock on an idle machine); other load on the machine inflates "
        "both.",
        "Test set: Multi30k test_2016_flickr (1,000 sentences), beam 5, sacreBLEU on the raw, "
        "cased references.",
        "",
        "| optimizer | BLEU | valid loss | valid nll_loss | wall-clock (train) | "
        "CPU time (train) | wall-clock (generate) | updates |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        last = r["valid"][max(r["valid"])] if r["valid"] else {}
        lines.append(f"| {label} | {r['bleu']:.2f} | {last.get('loss', float('nan')):.3f} | "
                     f"{last.get('nll_loss', float('nan')):.3f} | {r['train_s']:.0f} s | "
                     f"{r['train_cpu']:.0f} s | {r['gen_s']:.0f} s | {r['updates']} |")
    lines += ["", f"sacreBLEU signature: `{signature}`", "",
              "Valid loss is fairseq's label-smoothed cross-entropy (base 2) on val after the "
              "last epoch; the checkpoint scored is the last one (same number of updates for "
              "both).", "", "Validation loss per epoch (`valid_loss.png`):", "",
              "| epoch | " + " | ".join(results) + " |",
              "|---|" + "---|" * len(results)]
    epochs = sorted({e for r in results.values() for e in r["valid"]})
    for e in epochs:
        cells = [f"{r['valid'][e]['loss']:.3f}" if e in r["valid"] else "" for r in
                 results.values()]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    alphas = results.get("xsam", {}).get("alphas", [])
    if alphas:
        lines += ["", "XSAM alpha searches (update: alpha): " +
                  ", ".join(f"{u}: {a:.2f}" for u, a in alphas)]
    lines += ["", f"Total demo wall-clock: {total:.0f} s.", "",
              "## Commands run", "", "```"]
    lines += [c for _, c in commands]
    lines += ["```", ""]
    Path(path).write_text("\n".join(lines))


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
    for d in [raw, spm_dir, bin_dir] + [out / label for label in LABELS]:
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

    results, signature = {}, ""
    for label, optimizer in LABELS.items():
        save = out / label
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
        log(f"training {label} (--optimizer {optimizer}), {cfg['epochs']} epoch(s)")
        text, train_s = run(f"train {label}", cmd, log_path=out / f"train.{label}.log")
        train_cpu = run.last_cpu
        valid, alphas, updates = parse_log(text)
        log(f"{label}: {updates} updates in {train_s:.0f} s ({train_cpu:.0f} CPU s)")
        hyps, gen_s = generate(run, bin_dir, save / "checkpoint_last.pt",
                               out / f"generate.{label}.txt", refs, cfg["max_tokens"])
        (out / f"hyp.{label}.{TGT}").write_text("\n".join(hyps) + "\n", encoding="utf-8")
        bleu = BLEU()
        score = bleu.corpus_score(hyps, [refs])
        signature = str(bleu.get_signature())
        log(f"{label}: {score}  ({len(hyps)} hypotheses, generate {gen_s:.0f} s)")
        results[label] = dict(bleu=score.score, valid=valid, alphas=alphas, updates=updates,
                              train_s=train_s, train_cpu=train_cpu, gen_s=gen_s)
        run.commands.append((f"score {label}",
                             f"sacrebleu {raw / f'test.{TGT}'} -i {out / f'hyp.{label}.{TGT}'}"))

    plot(results, out / "valid_loss.png")
    total = time.time() - t0
    report(out / "report.md", args, cfg, results, signature, run.commands, total)
    log(f"sacreBLEU signature: {signature}")
    for label, r in results.items():
        last = r["valid"][max(r["valid"])]["loss"] if r["valid"] else float("nan")
        log(f"{label:6s} BLEU {r['bleu']:6.2f}  valid loss {last:.3f}  "
            f"train {r['train_s']:.0f} s ({r['train_cpu']:.0f} CPU s)  updates {r['updates']}")
    log(f"report: {out / 'report.md'}, plot: {out / 'valid_loss.png'}")
    log(f"total wall-clock: {total:.0f} s")


if __name__ == "__main__":
    main()
