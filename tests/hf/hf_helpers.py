"""A tiny Marian-style translation setup for the Trainer tests: model, data, collator, loss."""

from __future__ import annotations

import torch
from torch.utils.data import SequentialSampler
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

from fairseq_xsam.recipes import hf_multi30k as recipe

PAD, EOS, VOCAB = recipe.PAD, recipe.EOS, 40


def tiny_model(seed: int = 0, dropout: float = 0.0):
    """The recipe's Marian-style model at d = 16, one layer each side, a 40-token vocabulary."""
    return recipe.build_model(dict(d_model=16, layers=1, heads=2, ffn=32, vocab=VOCAB), dropout,
                              seed)


def sentences(n: int = 16, seed: int = 1) -> list:
    """``n`` source/target pairs of different lengths (so that the number of target tokens, by
    which the loss is normalised, differs between micro-batches)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        src_len, tgt_len = 3 + i % 5, 2 + (i * 3) % 7
        src = torch.randint(2, VOCAB, (src_len,), generator=g).tolist() + [EOS]
        tgt = torch.randint(2, VOCAB, (tgt_len,), generator=g).tolist() + [EOS]
        out.append({"input_ids": src, "labels": tgt})
    return out


#: the recipe's collator (padded source and mask, labels with -100, labels shifted right) and
#: its per-update-token loss without smoothing: cross-entropy summed over the target tokens,
#: divided by the update's target tokens (num_items_in_batch), what makes accumulation exact
collate = recipe.collate
token_loss = recipe.label_smoothed_loss(0.0)


class InOrderTrainer(Seq2SeqTrainer):
    """Batches in dataset order, so that runs with other batch shapes see the same examples."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None
                                 else self.train_dataset)


def make_trainer(tmp_path, *, model=None, data=None, batch=4, accumulation=1, steps=3,
                 max_grad_norm=0.0, loss=token_loss, lr=1e-2, callbacks=None, **args):
    arguments = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, max_steps=steps, learning_rate=lr,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.01,
        max_grad_norm=max_grad_norm, logging_steps=1, report_to=[],
        use_cpu=True, seed=0, data_seed=0, dataloader_num_workers=0,
        disable_tqdm=True, **{"save_strategy": "no", **args})
    return InOrderTrainer(model=model if model is not None else tiny_model(), args=arguments,
                          train_dataset=data if data is not None else sentences(),
                          data_collator=collate, compute_loss_func=loss, callbacks=callbacks)


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
