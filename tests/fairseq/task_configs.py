"""Tiny configurations of fairseq tasks that override ``train_step`` (or were never run with
``xsam_adamw``), on real German-English text from ``data/multi30k`` (the first lines of its
training and validation sets, lower-cased, split at spaces, vocabulary capped).

Each task's *hand loss* is its summed training loss written out from the task's definition
(criterion per language pair, the task's own noise), not through ``train_step``: the tests
compare it with the probes XSAM runs through the task's ``train_step``.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from typing import Callable, List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MULTI30K = os.path.join(ROOT, "data", "multi30k")
TINY_MODEL = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
              "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
              "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
              "--decoder-attention-heads", "2"]
TINY_ROBERTA = ["--arch", "roberta_base", "--encoder-layers", "1", "--encoder-embed-dim", "16",
                "--encoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
                "--max-positions", "64"]
#: sentence_prediction's label: does the English caption name a person? (made from the shipped
#: data; the input is the German caption)
PERSON_WORDS = {"man", "men", "woman", "women", "boy", "boys", "girl", "girls", "person",
                "people", "child", "children", "lady", "guy", "player", "worker"}


def read_lines(stem: str, lang: str, n: int) -> List[str]:
    with gzip.open(os.path.join(MULTI30K, f"{stem}.{lang}.gz"), "rt", encoding="utf-8") as f:
        return [next(f).strip().lower() for _ in range(n)]


def _write(path: str, lines: List[str]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _preprocess(argv: List[str]) -> None:
    from fairseq import options
    from fairseq_cli import preprocess

    preprocess.main(options.get_preprocessing_parser().parse_args(argv))


def bilingual(folder: str, n_train: int = 160, n_valid: int = 16) -> str:
    """de-en with one joined dictionary (both directions use it)."""
    raw = os.path.join(folder, "raw")
    os.makedirs(raw, exist_ok=True)
    for split, stem, n in (("train", "train", n_train), ("valid", "val", n_valid)):
        for lang in ("de", "en"):
            _write(os.path.join(raw, f"{split}.{lang}"), read_lines(stem, lang, n))
    dest = os.path.join(folder, "bin")
    _preprocess(["--source-lang", "de", "--target-lang", "en", "--trainpref", f"{raw}/train",
                 "--validpref", f"{raw}/valid", "--destdir", dest, "--joined-dictionary",
                 "--nwordssrc", "400", "--workers", "1"])
    return dest


def monolingual(folder: str, n_train: int = 160, n_valid: int = 16) -> str:
    """German and English captions as one monolingual corpus (masked_lm)."""
    raw = os.path.join(folder, "raw")
    os.makedirs(raw, exist_ok=True)
    for split, stem, n in (("train", "train", n_train), ("valid", "val", n_valid)):
        lines = read_lines(stem, "de", n // 2) + read_lines(stem, "en", n - n // 2)
        _write(os.path.join(raw, f"{split}.txt"), lines)
    dest = os.path.join(folder, "bin")
    _preprocess(["--only-source", "--trainpref", f"{raw}/train.txt", "--validpref",
                 f"{raw}/valid.txt", "--destdir", dest, "--nwordssrc", "400", "--workers", "1"])
    return dest


def classification(folder: str, dictionary: str, n_train: int = 160, n_valid: int = 16) -> str:
    """sentence_prediction: input0 = the German caption (the masked_lm dictionary), label = 1 if
    its English caption names a person (:data:`PERSON_WORDS`), else 0."""
    raw = os.path.join(folder, "raw")
    os.makedirs(raw, exist_ok=True)
    dest = os.path.join(folder, "bin")
    for split, stem, n in (("train", "train", n_train), ("valid", "val", n_valid)):
        _write(os.path.join(raw, f"{split}.input0"), read_lines(stem, "de", n))
        labels = ["1" if PERSON_WORDS & set(line.split()) else "0"
                  for line in read_lines(stem, "en", n)]
        _write(os.path.join(raw, f"{split}.label"), labels)
    _preprocess(["--only-source", "--trainpref", f"{raw}/train.input0", "--validpref",
                 f"{raw}/valid.input0", "--destdir", os.path.join(dest, "input0"), "--srcdict",
                 dictionary, "--workers", "1"])
    _preprocess(["--only-source", "--trainpref", f"{raw}/train.label", "--validpref",
                 f"{raw}/valid.label", "--destdir", os.path.join(dest, "label"), "--workers",
                 "1"])
    return dest


def speech(folder: str, n_train: int = 48, n_valid: int = 8, n_mel: int = 20) -> str:
    """speech_to_text: synthetic filterbank features (.npy, Gaussian, 24-40 frames of
    ``n_mel`` channels; fairseq reads .npy without audio libraries) paired with real English
    captions as targets; a word vocabulary; fairseq's TSV manifest and data config."""
    import numpy as np

    os.makedirs(os.path.join(folder, "fbank"), exist_ok=True)
    rng = np.random.default_rng(0)
    words = {}
    for split, stem, n in (("train", "train", n_train), ("valid", "val", n_valid)):
        rows = ["id\taudio\tn_frames\ttgt_text\tspeaker"]
        for i, text in enumerate(read_lines(stem, "en", n)):
            frames = int(rng.integers(24, 41))
            path = os.path.join(folder, "fbank", f"{split}{i}.npy")
            np.save(path, rng.standard_normal((frames, n_mel)).astype(np.float32))
            rows.append(f"{split}{i}\t{path}\t{frames}\t{text}\tspk0")
            for w in text.split():
                words[w] = words.get(w, 0) + 1
        _write(os.path.join(folder, f"{split}.tsv"), rows)
    _write(os.path.join(folder, "vocab.txt"),
           [f"{w} {c}" for w, c in sorted(words.items(), key=lambda x: (-x[1], x[0]))])
    _write(os.path.join(folder, "config.yaml"),
           [f"input_feat_per_channel: {n_mel}", "input_channels: 1",
            "vocab_filename: vocab.txt"])
    return folder


# --------------------------------------------------------------------------- hand losses
def plain_loss(task, model, criterion, sample):
    return criterion(model, sample)[0]


def multilingual_loss(task, model, criterion, sample):
    """multilingual_translation: the sum over the language pairs present in the batch."""
    total = 0.0
    for pair in task.model_lang_pairs:
        if sample.get(pair) is not None and len(sample[pair]) != 0:
            total = total + criterion(model.models[pair], sample[pair])[0]
    return total


def levenshtein_loss(task, model, criterion, sample):
    """translation_lev: the decoder input is the target with the task's noise."""
    noised = dict(sample, prev_target=task.inject_noise(sample["target"]))
    return criterion(model, noised)[0]


@dataclass
class TaskConfig:
    name: str
    data: str  # bilingual | monolingual | classification
    argv: List[str]
    hand_loss: Callable = plain_loss
    #: two micro-batches give the update of one batch twice the size (False where the task
    #: draws per batch, e.g. the language pair or the noise)
    update_freq: bool = True
    #: the options that turn every dropout of the model off
    no_dropout: List[str] = field(default_factory=lambda: [
        "--dropout", "0", "--attention-dropout", "0", "--activation-dropout", "0"])
    notes: List[str] = field(default_factory=list)


TASKS = {
    "multilingual_translation": TaskConfig(
        "multilingual_translation", "bilingual",
        ["--task", "multilingual_translation", "--lang-pairs", "de-en,en-de",
         "--arch", "multilingual_transformer", *TINY_MODEL,
         "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
        hand_loss=multilingual_loss),
    "translation_multi_simple_epoch": TaskConfig(
        "translation_multi_simple_epoch", "bilingual",
        ["--task", "translation_multi_simple_epoch", "--lang-pairs", "de-en,en-de",
         "--langs", "de,en", "--encoder-langtok", "src", "--decoder-langtok",
         "--sampling-method", "temperature", "--sampling-temperature", "1.5",
         "--arch", "transformer", *TINY_MODEL,
         "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
        update_freq=False),  # its batches mix the pairs by sampling
    "translation_lev": TaskConfig(
        "translation_lev", "bilingual",
        ["--task", "translation_lev", "--source-lang", "de", "--target-lang", "en",
         "--noise", "random_mask", "--arch", "cmlm_transformer", *TINY_MODEL,
         "--share-all-embeddings", "--criterion", "nat_loss", "--label-smoothing", "0.1",
         "--pred-length-offset", "--length-loss-factor", "0.1"],
        hand_loss=levenshtein_loss, update_freq=False),  # its noise is drawn per batch
    "masked_lm": TaskConfig(
        "masked_lm", "monolingual",
        ["--task", "masked_lm", "--criterion", "masked_lm", "--sample-break-mode", "complete",
         "--tokens-per-sample", "30", *TINY_ROBERTA]),
    "sentence_prediction": TaskConfig(
        "sentence_prediction", "classification",
        ["--task", "sentence_prediction", "--num-classes", "2", "--init-token", "0",
         "--separator-token", "2", "--criterion", "sentence_prediction", *TINY_ROBERTA],
        no_dropout=["--dropout", "0", "--attention-dropout", "0", "--activation-dropout", "0",
                    "--pooler-dropout", "0"]),
    "speech_to_text": TaskConfig(
        "speech_to_text", "speech",
        ["--task", "speech_to_text", "--config-yaml", "config.yaml", "--train-subset", "train",
         "--valid-subset", "valid", "--arch", "s2t_transformer_s", *TINY_MODEL,
         "--conv-channels", "16", "--conv-kernel-sizes", "5,5",
         "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"],
        # the padded frames of a batch enter the convolutional subsampler at the edges of the
        # shorter utterances, so a batch's loss depends on what it is batched with
        update_freq=False),
}
