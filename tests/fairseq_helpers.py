"""Tiny fairseq translation data and trainers for the tests (CPU, seconds), and what the tests
read from or inject into a trainer (its descent gradient, a poisoned criterion)."""

from __future__ import annotations

import torch

TINY_ARCH = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
             "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
             "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
             "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]


def make_corpus(folder, n_train=200, n_valid=20, seed=0):
    from fairseq_xsam.fairseq.harness import synthetic_corpus

    return synthetic_corpus(folder, n_train, n_valid, seed)


def build_trainer(data, extra, seed=1, cpu=True):
    """A fairseq Trainer for the tiny model with the tests' common options (CPU unless ``cpu``
    is False: then fairseq's default device, CUDA)."""
    from fairseq_xsam.fairseq.harness import build_trainer as build

    return build(data, ["--task", "translation", *(["--cpu"] if cpu else []), "--criterion",
                        "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
                        "--dropout", "0.0", "--max-tokens", "4000", "--lr", "1e-3",
                        "--no-progress-bar", *TINY_ARCH, *extra], seed=seed)


def batches(task, trainer, max_sentences, n):
    """The first n training batches of max_sentences sentences each, in a fixed order."""
    from fairseq_xsam.fairseq.harness import first_batches

    return first_batches(task, max_sentences, n)


def flat_params(model):
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


def close(a, b, rel=1e-5):
    """‖a − b‖ ≤ rel·‖b‖: float32 round-off, measured on the whole vector."""
    return float((a - b).norm()) <= rel * float(b.norm())


def descent_grad(trainer):
    inner = trainer.optimizer
    params = inner.fp32_optimizer.params if hasattr(inner, "fp32_optimizer") else inner.params
    return torch.cat([p.grad.reshape(-1).double() for p in params])


def poison(criterion, bad_calls, probes_only=False, value=float("nan")):
    """Makes the criterion's loss NaN (or ``value``) on the chosen calls (1 = the trainer's own
    pass)."""
    forward = criterion.forward
    calls = [0]

    def wrapped(model, sample, *a, **k):
        loss, size, log = forward(model, sample, *a, **k)
        calls[0] += 1
        if calls[0] in bad_calls and (not probes_only or not torch.is_grad_enabled()):
            loss = loss * value
        return loss, size, log

    criterion.forward = wrapped
    return calls
