"""A tiny Marian-style translation setup for the Trainer tests: model, data, collator, loss."""

from __future__ import annotations

import torch
from torch.utils.data import SequentialSampler
from transformers import MarianConfig, MarianMTModel, Seq2SeqTrainer, Seq2SeqTrainingArguments

PAD, EOS, VOCAB = 0, 1, 40


def tiny_model(seed: int = 0, dropout: float = 0.0) -> MarianMTModel:
    torch.manual_seed(seed)
    config = MarianConfig(vocab_size=VOCAB, decoder_vocab_size=VOCAB, d_model=16,
                          encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                          max_position_embeddings=32, pad_token_id=PAD, eos_token_id=EOS,
                          decoder_start_token_id=PAD, forced_eos_token_id=EOS, dropout=dropout,
                          attention_dropout=0.0, activation_dropout=0.0, scale_embedding=True,
                          share_encoder_decoder_embeddings=True)
    return MarianMTModel(config)


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


def collate(examples: list) -> dict:
    width = max(len(e["input_ids"]) for e in examples)
    label_width = max(len(e["labels"]) for e in examples)
    ids = torch.full((len(examples), width), PAD)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), label_width), -100)
    for row, e in enumerate(examples):
        ids[row, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
        mask[row, :len(e["input_ids"])] = 1
        labels[row, :len(e["labels"])] = torch.tensor(e["labels"])
    decoder_ids = torch.cat([torch.full((len(examples), 1), PAD), labels[:, :-1]], dim=1)
    decoder_ids[decoder_ids == -100] = PAD  # labels shifted right (Marian starts with PAD)
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids,
            "labels": labels}


def token_loss(outputs, labels, num_items_in_batch=None):
    """Cross-entropy summed over the target tokens, divided by the number of target tokens of
    the whole update (``num_items_in_batch``): what makes accumulation exact."""
    logits = outputs["logits"]
    total = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                              labels.reshape(-1), ignore_index=-100,
                                              reduction="sum")
    if num_items_in_batch is None:
        return total / labels.ne(-100).sum()
    return total / num_items_in_batch


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
