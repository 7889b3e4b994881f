"""A fairseq checkpoint's model and criterion, and fixed batches of one of its splits.

Imports fairseq when :func:`load` is called (never at import time). The batches are those of
fairseq's own iterator for epoch 1 with the given seed: ``shuffled`` (a random sample of the
split, of every length) or ``sorted`` (fairseq's length-sorted order, whose first batches hold
the shortest sentences).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

ORDERS = ("shuffled", "sorted")


@dataclass
class Loaded:
    model: torch.nn.Module
    criterion: torch.nn.Module
    task: object
    cfg: object
    samples: list
    device: torch.device
    epoch: Optional[int]

    @property
    def params(self) -> List[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]


def checkpoint_epoch(path: str, state: Optional[dict] = None) -> Optional[int]:
    """The epoch a checkpoint was saved after: N of ``checkpointN.pt``, else the one its
    training iterator recorded."""
    found = re.fullmatch(r"checkpoint(\d+)\.pt", os.path.basename(path))
    if found:
        return int(found.group(1))
    try:
        return int(state["extra_state"]["train_iterator"]["epoch"])
    except (TypeError, KeyError, ValueError):
        return None


def load(checkpoint: str, *, data: Optional[str] = None, split: str = "train",
         batches: int = 4, first_batch: int = 0, max_tokens: int = 4096,
         max_sentences: Optional[int] = None, seed: int = 1, order: str = "shuffled",
         cpu: bool = False) -> Loaded:
    """Loads ``checkpoint`` the fairseq way (eval mode, fp32) and takes ``batches`` batches from
    index ``first_batch`` on. Raises ``SystemExit`` with one line on a missing file or too few
    batches."""
    from fairseq_xsam.fairseq import register

    register()  # xsam_adamw checkpoints name the optimizer; fairseq's types for the safe load
    from fairseq import checkpoint_utils, utils

    if order not in ORDERS:
        raise SystemExit(f"invalid batch order {order!r} (allowed: {', '.join(ORDERS)})")
    if not os.path.isfile(checkpoint):
        raise SystemExit(f"checkpoint: no such file: {checkpoint}")
    device = torch.device("cpu" if cpu or not torch.cuda.is_available() else "cuda")
    overrides = {"data": data} if data else None
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [checkpoint], arg_overrides=overrides)
    state = checkpoint_utils.load_checkpoint_to_cpu(checkpoint)
    model = models[0].float().to(device).eval()
    criterion = task.build_criterion(cfg.criterion).to(device).eval()
    task.load_dataset(split, combine=False, epoch=1)
    itr = task.get_batch_iterator(
        dataset=task.dataset(split), max_tokens=max_tokens, max_sentences=max_sentences,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=True, required_batch_size_multiple=1, seed=seed, epoch=1,
    ).next_epoch_itr(shuffle=order == "shuffled")
    samples = []
    for i, sample in enumerate(itr):
        if i < first_batch:
            continue
        samples.append(utils.move_to_cuda(sample) if device.type == "cuda" else sample)
        if len(samples) == batches:
            break
    if len(samples) < batches:
        raise SystemExit(f"invalid --batches/--first-batch: the {split} split has only "
                         f"{first_batch + len(samples)} batches at --max-tokens {max_tokens}")
    return Loaded(model, criterion, task, cfg, samples, device,
                  checkpoint_epoch(checkpoint, state))


def batch_loss(loaded: Loaded, sample, grad: bool) -> Tuple[torch.Tensor, Optional[list]]:
    """The training criterion per unit of sample size on one batch (dropout off), as a float64
    0-dim tensor, and with ``grad`` its gradient (one tensor per trainable parameter)."""
    params = loaded.params
    if not grad:
        with torch.no_grad():
            loss, size, _ = loaded.criterion(loaded.model, sample)
        return (loss.double() / float(size)).detach(), None
    for p in params:
        p.grad = None
    loss, size, _ = loaded.criterion(loaded.model, sample)
    (loss / float(size)).backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
    for p in params:
        p.grad = None
    return (loss.detach().double() / float(size)), grads
