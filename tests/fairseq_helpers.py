"""Tiny fairseq translation data and trainers for the tests (CPU, seconds)."""

from __future__ import annotations

import os
import random
import sys

import torch

WORDS = ["ein", "mann", "frau", "hund", "katze", "sieht", "hat", "den", "die", "das", "ball",
         "rot", "blau", "groß", "klein", "läuft", "springt", "über", "unter", "haus"]
EN = ["a", "man", "woman", "dog", "cat", "sees", "has", "the", "the", "the", "ball", "red",
      "blue", "big", "small", "runs", "jumps", "over", "under", "house"]

TINY_ARCH = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
             "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
             "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
             "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]


def make_corpus(folder, n_train=200, n_valid=20, seed=0):
    """A word-for-word 'translation' corpus, binarised with fairseq-preprocess."""
    rng = random.Random(seed)
    raw = os.path.join(folder, "raw")
    os.makedirs(raw, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_valid)):
        de, en = [], []
        for _ in range(n):
            idx = [rng.randrange(len(WORDS)) for _ in range(rng.randint(3, 9))]
            de.append(" ".join(WORDS[i] for i in idx))
            en.append(" ".join(EN[i] for i in reversed(idx)))
        for lang, lines in (("de", de), ("en", en)):
            with open(os.path.join(raw, f"{split}.{lang}"), "w") as f:
                f.write("\n".join(lines) + "\n")
    data = os.path.join(folder, "data-bin")
    from fairseq_cli import preprocess

    argv = sys.argv
    sys.argv = ["fairseq-preprocess", "--source-lang", "de", "--target-lang", "en",
                "--trainpref", f"{raw}/train", "--validpref", f"{raw}/valid",
                "--testpref", f"{raw}/test", "--destdir", data, "--workers", "1"]
    try:
        preprocess.cli_main()
    finally:
        sys.argv = argv
    return data


def build_trainer(data, extra, seed=1):
    """A fairseq Trainer (task, model, criterion) from command-line style options."""
    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    import fairseq_xsam  # noqa: F401  (registers xsam_adamw, as --user-dir does)

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data, "--task", "translation", "--cpu",
                                                "--seed", str(seed), "--criterion",
                                                "label_smoothed_cross_entropy",
                                                "--label-smoothing", "0.1", "--dropout", "0.0",
                                                "--max-tokens", "4000", "--lr", "1e-3",
                                                "--no-progress-bar", *TINY_ARCH, *extra])
    cfg = convert_namespace_to_omegaconf(args)
    utils.set_torch_seed(seed)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    return cfg, task, trainer


def batches(task, trainer, max_sentences, n):
    """The first n training batches of max_sentences sentences each, in a fixed order."""
    itr = task.get_batch_iterator(dataset=task.dataset("train"), max_tokens=100000,
                                  max_sentences=max_sentences, seed=1, epoch=1,
                                  required_batch_size_multiple=1).next_epoch_itr(shuffle=False)
    out = []
    for sample in itr:
        out.append(sample)
        if len(out) == n:
            break
    return out


def flat_params(model):
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
