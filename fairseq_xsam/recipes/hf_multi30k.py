"""xsam-hf-multi30k: Multi30k De→En in the Hugging Face ``Seq2SeqTrainer``, AdamW vs SAM vs XSAM.

The fairseq study's setting, as far as a Trainer has it: a Marian-style encoder-decoder built
from a config (no download) of the study's size (3+3 layers, d=128, 4 heads, FFN 512, shared
embeddings, dropout 0.1), a joint SentencePiece BPE model (6,000 pieces) trained on the shipped
training text, label-smoothed cross-entropy (0.1, PyTorch's form) per target token, AdamW (β = 0.9, 0.98,
weight decay 1e-4), lr 2e-3 with 200 warm-up updates and inverse-sqrt decay, about 110
sentences per update; SAM and XSAM through :func:`fairseq_xsam.hf.equip` at the ρ the fairseq
study chose (SAM 0.1, XSAM 0.05, ρ' = 3ρ), α searched every epoch. Evaluation: beam search on the
three test sets, sacreBLEU against the raw references, in the run layout ``xsam-report`` reads.

    xsam-hf-multi30k --opt xsam --seed 1 --epochs 2 --runs runs/hf_multi30k --work /tmp/hf
    xsam-report runs/hf_multi30k/*-seed1 --rescore --out docs/results/multi30k_hf

A run folder ``RUNS/<OPT>-seed<SEED>/`` holds ``run.json``, ``command.txt``, ``train.log`` (the
run's log, with XSAM's α searches), ``log_history.json`` (the Trainer's logs: validation loss
per epoch, α, φ, ‖g_k‖), ``timing.json`` and ``eval/`` (hypotheses, ``bleu.json``); the Trainer's
checkpoints go to ``WORK`` (not committed): a run started again resumes from its last epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import torch

from .. import settings
from ..report import run_record
from . import multi30k

RHO = {"sam": 0.1, "xsam": 0.05}  # the fairseq study's choice per optimizer (its ρ sweep)
SIZES = {"study": dict(d_model=128, layers=3, heads=4, ffn=512, vocab=6000),
         "quick": dict(d_model=32, layers=1, heads=2, ffn=64, vocab=400)}
PAD, EOS, UNK = 0, 1, 2
log = logging.getLogger("xsam-hf-multi30k")


def tokenizer(work: Path, vocab: int, train_lines=None):
    """The joint SentencePiece model, trained once per corpus and size (pad 0, eos 1, unk 2)."""
    import sentencepiece as spm

    stem = work / f"spm{vocab}-{train_lines or 'all'}-{multi30k.source_digest()[:12]}"
    if not stem.with_suffix(".model").is_file():
        work.mkdir(parents=True, exist_ok=True)
        text = work / "train.joint"
        lines = [line for lang in (multi30k.SRC, multi30k.TGT)
                 for line in multi30k.read_source("train", lang)[:train_lines]]
        text.write_text("\n".join(lines) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(text), model_prefix=str(stem), vocab_size=vocab, model_type="bpe",
            character_coverage=1.0, normalization_rule_name="identity", pad_id=PAD,
            eos_id=EOS, unk_id=UNK, bos_id=-1, num_threads=1, minloglevel=2)
        text.unlink()
    return spm.SentencePieceProcessor(model_file=str(stem.with_suffix(".model")))


def encode(sp, split: str, lines=None, max_len: int = 128) -> list:
    stem = multi30k.SPLITS[split]
    src, tgt = (multi30k.read_source(stem, lang)[:lines] for lang in (multi30k.SRC,
                                                                          multi30k.TGT))
    return [{"input_ids": s[:max_len - 1] + [EOS], "labels": t[:max_len - 1] + [EOS]}
            for s, t in zip(sp.encode(src), sp.encode(tgt))]


def collate(examples: list) -> dict:
    """Padded source, attention mask, labels (-100 on padding) and the decoder's input: the
    labels shifted right behind the start token (PAD, as Marian)."""
    width = max(len(e["input_ids"]) for e in examples)
    label_width = max(len(e["labels"]) for e in examples)
    ids = torch.full((len(examples), width), PAD)
    labels = torch.full((len(examples), label_width), -100)
    for row, e in enumerate(examples):
        ids[row, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
        labels[row, :len(e["labels"])] = torch.tensor(e["labels"])
    decoder = torch.cat([torch.full((len(examples), 1), PAD), labels[:, :-1]], dim=1)
    decoder[decoder == -100] = PAD
    return {"input_ids": ids, "attention_mask": ids.ne(PAD).long(),
            "decoder_input_ids": decoder, "labels": labels}


def label_smoothed_loss(epsilon: float):
    """Label-smoothed cross-entropy per target token, PyTorch's form (ε spread over all V
    classes; fairseq's label_smoothed_cross_entropy spreads it over the V − 1 others, a
    difference of ε/V(V−1) per class): summed over the micro-batch and divided by the update's
    target tokens (``num_items_in_batch``), so accumulation is exact."""
    def loss(outputs, labels, num_items_in_batch=None):
        logp = torch.log_softmax(outputs["logits"].float(), dim=-1)
        keep = labels.ne(-100)
        target = labels.clamp(min=0).unsqueeze(-1)
        nll = -logp.gather(-1, target).squeeze(-1)
        smooth = -logp.mean(-1)
        total = ((1 - epsilon) * nll + epsilon * smooth)[keep].sum()
        return total / (num_items_in_batch if num_items_in_batch is not None else keep.sum())
    return loss


def build_model(size: dict, dropout: float, seed: int):
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(seed)
    return MarianMTModel(MarianConfig(
        vocab_size=size["vocab"], decoder_vocab_size=size["vocab"], d_model=size["d_model"],
        encoder_layers=size["layers"], decoder_layers=size["layers"],
        encoder_attention_heads=size["heads"], decoder_attention_heads=size["heads"],
        encoder_ffn_dim=size["ffn"], decoder_ffn_dim=size["ffn"], max_position_embeddings=256,
        dropout=dropout, attention_dropout=0.0, activation_dropout=0.0, scale_embedding=True,
        pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, forced_eos_token_id=EOS,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True))


def xsam_options(args) -> dict:
    if args.opt == "adamw":
        return {}
    rho = args.rho if args.rho is not None else RHO[args.opt]
    return {"rho": rho, "probe_rho": round(3 * rho, 12), "sam_variant": args.opt}


def _log_callback():
    from transformers import TrainerCallback

    class LogToFile(TrainerCallback):
        """The Trainer's logs (loss, lr, grad_norm, xsam_alpha, xsam_alpha_at_edge, ...) into
        the run's train.log."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            log.info("step %d | %s", state.global_step, " | ".join(
                f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in (logs or {}).items()))

    return LogToFile()


def train(args, run: Path):
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    from ..hf import equip

    size = SIZES[args.size]
    sp = tokenizer(args.work, size["vocab"], args.train_lines)
    train_set = encode(sp, "train", args.train_lines)
    valid_set = encode(sp, "valid", args.test_lines)
    out = args.work / "checkpoints" / run.name
    targs = Seq2SeqTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch,
        per_device_eval_batch_size=args.batch, num_train_epochs=args.epochs,
        learning_rate=args.lr, lr_scheduler_type="inverse_sqrt", warmup_steps=args.warmup,
        adam_beta1=0.9, adam_beta2=0.98, weight_decay=1e-4, max_grad_norm=0.0,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
        logging_steps=args.log_every, report_to=[], use_cpu=True, seed=args.seed,
        train_sampling_strategy="group_by_length",  # batches of similar lengths, as fairseq
        data_seed=args.seed, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Seq2SeqTrainer(model=build_model(size, 0.1, args.seed), args=targs,
                             train_dataset=train_set, eval_dataset=valid_set,
                             data_collator=collate, compute_loss_func=label_smoothed_loss(0.1),
                             callbacks=[_log_callback()])
    options = xsam_options(args)
    if options:
        equip(trainer, **options)
    resume = any(out.glob("checkpoint-*"))
    start = time.time()
    trainer.train(resume_from_checkpoint=True if resume else None)
    history, saved = list(trainer.state.log_history), run / "log_history.json"
    if resume and saved.is_file():  # a checkpoint's history lacks the earlier calls' summaries
        earlier = [h for h in json.loads(saved.read_text()) if "train_runtime" in h]
        history[-1:-1] = [h for h in earlier if h not in history]
    saved.write_text(json.dumps(history, indent=1) + "\n")
    timing = run / "timing.json"  # wall-clock added up over every call that trained the run
    before = json.loads(timing.read_text())["wall_s"] if resume and timing.is_file() else 0.0
    timing.write_text(json.dumps({
        "wall_s": round(before + time.time() - start, 1), "updates": trainer.state.global_step,
        "resumed": resume, "threads": torch.get_num_threads()}, indent=2) + "\n")
    return trainer.model, sp, options


def evaluate(model, sp, run: Path, args) -> dict:
    """Beam search on the three test sets; sacreBLEU against the raw cased references."""
    from sacrebleu.metrics import BLEU

    model.eval()
    (run / "eval").mkdir(exist_ok=True)
    scores = {}
    for name in multi30k.TEST_SIZES:
        data = encode(sp, name, args.test_lines)
        order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
        hyps = [None] * len(data)
        for start in range(0, len(data), 64):  # batches of similar lengths, in test order after
            rows = order[start:start + 64]
            batch = collate([data[i] for i in rows])
            with torch.no_grad():
                out = model.generate(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"],
                                     num_beams=args.beam, max_new_tokens=args.max_new_tokens)
            for i, row in zip(rows, out):
                hyps[i] = sp.decode([t for t in row.tolist() if t not in (PAD, EOS)])
        refs = multi30k.read_source(multi30k.SPLITS[name], multi30k.TGT)[:args.test_lines]
        (run / "eval" / f"{name}.hyp.en").write_text("\n".join(hyps) + "\n", encoding="utf-8")
        bleu = BLEU()
        score = bleu.corpus_score(hyps, [refs])
        scores[name] = {"sacrebleu": round(score.score, 2),
                        "signature": str(bleu.get_signature()),
                        "tokenized_bleu": round(BLEU(tokenize="none").corpus_score(
                            hyps, [refs]).score, 2),
                        "hypotheses": len(hyps), "references": len(refs),
                        "hypothesis_file": f"{name}.hyp.en",
                        "reference_file": f"data/multi30k/{multi30k.SPLITS[name]}.en.gz"}
        log.info("%s: sacreBLEU %.2f (%d sentences)", name, score.score, len(hyps))
    (run / "eval" / "bleu.json").write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xsam-hf-multi30k", description=__doc__.split("\n\n")[0])
    p.add_argument("--opt", choices=("adamw", "sam", "xsam"), required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epochs", type=float, default=2.0, help="training epochs (default 2)")
    p.add_argument("--rho", type=float, help="default: the fairseq study's (SAM 0.1, XSAM 0.05)")
    p.add_argument("--runs", type=Path, default=Path("runs/hf_multi30k"))
    p.add_argument("--work", type=Path, default=Path("work/hf_multi30k"),
                   help="tokenizer and checkpoints (not committed)")
    p.add_argument("--size", choices=tuple(SIZES), default="study")
    p.add_argument("--batch", type=int, default=110, help="sentences per update (default 110)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--train-lines", type=int, help="the first N training pairs only")
    p.add_argument("--test-lines", type=int, help="the first N pairs of each test set only")
    p.add_argument("--log-every", type=int, default=50)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    for name in ("epochs", "batch", "lr", "beam", "log_every", "max_new_tokens"):
        if getattr(args, name) <= 0:
            parser().error(f"argument --{name.replace('_', '-')}: {getattr(args, name)} "
                           "(allowed: > 0)")
    if args.rho is not None and args.opt == "adamw":
        parser().error("argument --rho: AdamW has no rho (allowed: with --opt sam or xsam)")
    try:
        settings.check_kwargs(xsam_options(args), entry="hf")
    except settings.OptionError as e:
        parser().error(str(e))
    run = args.runs / f"{args.opt}-seed{args.seed}"
    run.mkdir(parents=True, exist_ok=True)
    command = ["xsam-hf-multi30k", *(argv if argv is not None else sys.argv[1:])]
    (run / "command.txt").write_text(shlex.join(command) + "\n")
    settings_ = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                 **xsam_options(args)}
    run_record.write(run, run_record.record(command, "data/multi30k", args.work, settings_))
    with _log_to(run / "train.log"):
        model, sp, _ = train(args, run)
        evaluate(model, sp, run, args)
    return 0


@contextlib.contextmanager
def _log_to(path: Path):
    """INFO and above of every logger into ``path`` (appended: a resumed run adds to its log),
    and to the terminal unless something else already prints them."""
    root = logging.getLogger()
    handlers = [logging.FileHandler(path, encoding="utf-8")]
    if not root.handlers:
        handlers.append(logging.StreamHandler())
    form = logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                             "%Y-%m-%d %H:%M:%S")
    level = root.level
    root.setLevel(logging.INFO)
    for h in handlers:
        h.setFormatter(form)
        root.addHandler(h)
    try:
        yield
    finally:
        root.setLevel(level)
        for h in handlers:
            root.removeHandler(h)
            h.close()

if __name__ == "__main__":
    sys.exit(main())
