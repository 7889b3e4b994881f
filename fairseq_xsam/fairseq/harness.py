"""Building a fairseq Trainer from command-line style options, outside ``fairseq-train``.

Used by the tests and ``scripts/benchmark.py`` to drive the real trainer update by update.
"""

from __future__ import annotations

import os
import random
import sys
from typing import List, Sequence

WORDS = ["ein", "mann", "frau", "hund", "katze", "sieht", "hat", "den", "die", "das", "ball",
         "rot", "blau", "groß", "klein", "läuft", "springt", "über", "unter", "haus"]
EN = ["a", "man", "woman", "dog", "cat", "sees", "has", "the", "the", "the", "ball", "red",
      "blue", "big", "small", "runs", "jumps", "over", "under", "house"]


def build_trainer(data: str, argv: Sequence[str], seed: int = 1, load_train: bool = True):
    """(cfg, task, trainer) for ``fairseq-train DATA ARGV`` (``--user-dir`` is implied)."""
    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    from . import register

    register()
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data, "--seed", str(seed), *argv])
    cfg = convert_namespace_to_omegaconf(args)
    utils.set_torch_seed(seed)
    task = tasks.setup_task(cfg.task)
    if load_train:
        task.load_dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return cfg, task, Trainer(cfg, task, model, criterion)


def first_batches(task, max_sentences: int, n: int, max_tokens: int = 100000) -> List[dict]:
    """The first ``n`` training batches (fixed order, no shuffling)."""
    itr = task.get_batch_iterator(dataset=task.dataset("train"), max_tokens=max_tokens,
                                  max_sentences=max_sentences, seed=1, epoch=1,
                                  required_batch_size_multiple=1).next_epoch_itr(shuffle=False)
    out = []
    for sample in itr:
        out.append(sample)
        if len(out) == n:
            break
    return out


def synthetic_corpus(folder, n_train=200, n_valid=20, seed=0):
    """A word-for-word 'translation' corpus (reversed order), binarised with fairseq-preprocess."""
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
