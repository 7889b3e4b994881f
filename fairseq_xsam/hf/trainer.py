"""The glue between the Hugging Face ``Trainer`` and XSAM: replaying the update's micro-batches.

The Trainer's optimizer never sees the batch, and the Trainer clips the gradient before
``optimizer.step()``. :func:`equip` gives a trainer (``Trainer``, ``Seq2SeqTrainer`` or a
subclass) the methods of :class:`XSAMTrainerMixin`, which

1. builds :class:`fairseq_xsam.XSAM` around the optimizer ``TrainingArguments.optim`` chooses
   (AdamW by default: its class, parameter groups, weight decay and arguments are the Trainer's);
2. records every micro-batch of the update as ``training_step`` receives it, with
   ``num_items_in_batch`` and the random state (dropout masks are replayed);
3. after the update's last micro-batch (``accelerator.sync_gradients``), before the Trainer
   clips, runs the XSAM passes (:meth:`XSAM.sharpness_gradient`): each extra gradient replays all
   micro-batches through the Trainer's own ``training_step`` with its ``no_sync`` pattern, so the
   loss normalisation (by the number of items, or by the accumulation steps), autocast and the
   gradient all-reduce are the Trainer's; each probe replays them forward-only through the same
   ``training_step`` (:class:`_LossSum` stands in for the accelerator, so ``backward(loss)`` adds
   the loss up), summed over workers so that all pick the same α. The descent gradient is left
   where the Trainer's gradient was, so ``max_grad_norm`` clips it and ``grad_norm`` logs it.

fp16 (``GradScaler``): the passes' gradients are unscaled and checked for inf/NaN here; the
descent gradient is handed back scaled (the scale is a power of two, so exactly); an overflow in
any pass poisons it, so the Trainer's own check skips the update, lowers the scale and does not
step the scheduler, exactly as for an overflow in its own pass. bf16 needs nothing: autocast is
the prepared model's, replayed with it.

Not supported (refused by :func:`equip` with the reason): DeepSpeed, FSDP, a model split or
sharded across devices, DataParallel (several GPUs in one process), optimizers that do not take
a plain gradient step (LOMO, GaLore, APOLLO, schedule-free), and a Trainer given its own
optimizer instance.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, List, Optional

import torch

try:
    from transformers import TrainerCallback
except ImportError as e:  # the extra is not installed
    raise ImportError("fairseq_xsam.hf needs the 'hf' extra: pip install 'fairseq-xsam[hf]' "
                      "(transformers 5.25.0, accelerate 1.16.0)") from e

from .. import core, settings
from ..optim import XSAM, _rng_state, _set_rng_state
from ..search_log import search_line

logger = logging.getLogger(__name__)

#: ``TrainingArguments.optim`` values XSAM cannot wrap: they do not take a plain step on the
#: gradient the Trainer leaves in ``.grad``.
REFUSED_OPTIMIZERS = {
    "lomo": "updates the weights inside backward",
    "galore": "projects the gradient inside its step",
    "apollo": "projects the gradient inside its step",
    "schedule_free": "evaluates at other weights than it updates (optimizer.train()/eval())",
}


def check_options(options: dict) -> dict:
    """XSAM's options as given to :func:`equip`: checked once, with the shared one-line errors
    of :class:`fairseq_xsam.settings.OptionError`; unset ``alpha_search`` searches every epoch."""
    unknown = sorted(set(options) - set(settings.PYTORCH))
    if unknown:
        raise ValueError(f"Invalid XSAM option {unknown[0]!r} (allowed: "
                         f"{', '.join(settings.PYTORCH)})")
    return settings.check_kwargs(options, entry="hf")


def _refusal(trainer) -> str:
    if getattr(trainer, "is_deepspeed_enabled", False):
        return "DeepSpeed is not supported (allowed: single process, DDP or DataParallel)"
    if getattr(trainer, "is_fsdp_enabled", False):
        return "FSDP is not supported (allowed: single process, DDP or DataParallel)"
    if getattr(trainer, "is_model_parallel", False) or getattr(
            trainer, "is_distributed_loading_by_transformers", False):
        return ("a model split or sharded across devices is not supported (allowed: the whole "
                "model on one device per process)")
    if trainer.args.n_gpu > 1:
        return ("DataParallel (several GPUs in one process) is not supported: its replicas' "
                "random streams cannot be replayed (allowed: one GPU per process, e.g. torchrun "
                "or accelerate launch)")
    if trainer.optimizer is not None:
        return ("the Trainer was given an optimizer; equip() builds XSAM around the one "
                "TrainingArguments.optim chooses (allowed: optimizers=(None, scheduler))")
    optim = str(getattr(trainer.args.optim, "value", trainer.args.optim))
    for word, why in REFUSED_OPTIMIZERS.items():
        if word in optim:
            return (f"optim={optim!r} {why} (allowed: optimizers that step on .grad, e.g. "
                    "adamw_torch, adamw_torch_fused, sgd, adafactor)")
    return ""


def equip(trainer, **options):
    """Makes ``trainer`` train with XSAM (or any variant: ``sam_variant``); returns it.

    ``options`` are :class:`fairseq_xsam.XSAM`'s (``rho``, ``probe_rho``, ``ascent_steps``,
    ``sam_variant``, ``alpha_max``, …, one name and default each, :data:`settings.OPTIONS`); an
    invalid one raises :class:`~fairseq_xsam.settings.OptionError` here, before training.
    ``alpha_search`` unset searches α at the first update of every epoch, as the paper does.
    The trainer's class becomes a subclass of its class with :class:`XSAMTrainerMixin`'s methods.
    """
    values = check_options(options)
    if isinstance(trainer, XSAMTrainerMixin):
        raise ValueError("equip(): this trainer is equipped already")
    refusal = _refusal(trainer)
    if refusal:
        raise ValueError(f"equip(): {refusal}")
    cls = type(trainer)
    trainer.__class__ = type(f"XSAM{cls.__name__}", (XSAMTrainerMixin, cls), {})
    trainer._xsam_setup(values)
    return trainer


@dataclass
class _MicroBatch:
    inputs: Any
    num_items: Any
    rng: Any


class _LossSum:
    """The accelerator a probe hands to ``training_step``: ``backward(loss)`` adds the loss (as
    the accelerator would scale it, without a loss scaler) to :attr:`total` instead of
    differentiating it; everything else is the real accelerator's."""

    def __init__(self, accelerator):
        self._accelerator = accelerator
        self.total = None

    def __getattr__(self, name):
        return getattr(self._accelerator, name)

    def backward(self, loss, **kwargs):
        loss = loss.detach().float() / self._accelerator.gradient_accumulation_steps
        self.total = loss if self.total is None else self.total + loss


class _EpochClock(TrainerCallback):
    """Tells XSAM each epoch's start (``alpha_search='epoch'``); epochs count from 1. A new
    ``train()`` starts with no recorded micro-batches."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._xsam_micro = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        xsam = self.trainer._xsam
        if xsam is not None:
            xsam.begin_epoch(math.floor((state.epoch or 0.0) + 1e-6) + 1)


class XSAMTrainerMixin:
    """The methods :func:`equip` adds to a Trainer (see the module's docstring)."""

    # -- setup and the optimizer ------------------------------------------------------------
    def _xsam_setup(self, values: dict) -> None:
        self._xsam_values = values
        self._xsam_micro: List[_MicroBatch] = []
        self._xsam_tally = _Tally()
        self.add_callback(_EpochClock(self))

    @property
    def _xsam(self) -> Optional[XSAM]:
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # Accelerated…
        return optimizer if isinstance(optimizer, XSAM) else None

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            base = super().create_optimizer(model)  # the Trainer's class, groups and kwargs
            cls, kwargs = (getattr(self, "optimizer_cls_and_kwargs", None)
                           or self.get_optimizer_cls_and_kwargs(
                               self.args, self.model if model is None else model))
            if cls is not type(base) or "params" in kwargs:
                raise ValueError(f"equip(): optim={self.args.optim!r} builds its optimizer from "
                                 "a factory or its own parameter list, which XSAM cannot wrap "
                                 "(allowed: adamw_torch, adamw_torch_fused, sgd, adafactor, ...)")
            groups = [dict(group) for group in base.param_groups]
            self.optimizer = XSAM.from_checked(groups, cls, self._xsam_values, **kwargs)
        return self.optimizer

    # -- recording and the update -----------------------------------------------------------
    def _xsam_devices(self, model):
        return sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._xsam_micro.append(_MicroBatch(copy.copy(inputs), num_items_in_batch,
                                            _rng_state(self._xsam_devices(model))))
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        except BaseException:  # (an interrupted update is never replayed into the next one)
            self._xsam_micro = []
            raise
        if self.accelerator.sync_gradients:  # the update's last micro-batch: before clipping
            try:
                self._xsam_update(model)
            finally:
                self._xsam_micro = []
        return loss

    def _xsam_replay(self, model, micro: _MicroBatch):
        _set_rng_state(micro.rng, self._xsam_devices(model))
        return super().training_step(model, copy.copy(micro.inputs), micro.num_items)

    def _xsam_update(self, model) -> None:
        xsam = self._xsam
        devices = self._xsam_devices(model)
        scaler = self.accelerator.scaler
        theta = xsam._params()
        overflow = None
        if scaler is not None:  # fp16: g_0 to true units; an overflow there is the Trainer's
            overflow = self._xsam_unscale(scaler, theta, None)
            if bool(overflow.item()):  # (a decision: the passes would be wasted)
                torch._foreach_mul_([p.grad for p in theta], scaler._scale.float().reshape(()))
                xsam._prepared = None
                return
        after = _rng_state(devices)  # the stream a plain update continues with

        def gradient():
            xsam.zero_grad(set_to_none=True)
            for i, micro in enumerate(self._xsam_micro):
                last = i == len(self._xsam_micro) - 1
                with (contextlib.nullcontext() if last else self.accelerator.no_sync(model)):
                    self._xsam_replay(model, micro)
            if scaler is not None:
                self._xsam_unscale(scaler, theta, overflow)

        try:
            info = xsam.sharpness_gradient(gradient, lambda: self._xsam_loss(model))
        finally:
            _set_rng_state(after, devices)
        if scaler is not None:  # back to the Trainer's units; an overflow poisons the update
            poison = torch.where(overflow > 0, torch.full_like(overflow, math.inf),
                                 torch.ones_like(overflow))
            torch._foreach_mul_([p.grad for p in theta],
                                (scaler._scale.float().reshape(()) * poison).to(overflow.device))
        self._xsam_tally.add(info)
        if info.probe_losses is not None and self.is_world_process_zero():
            logger.info(search_line(self.state.global_step + 1, info))

    @staticmethod
    def _xsam_unscale(scaler, theta, found: Optional[torch.Tensor]) -> torch.Tensor:
        """Gradients ← gradients / scale, in place; ``found`` (made if None) becomes 1 if any is
        inf or NaN (``GradScaler``'s own kernel)."""
        grads = [p.grad for p in theta if p.grad is not None]
        if found is None:
            found = torch.zeros((), device=grads[0].device)
        inv_scale = scaler._scale.double().reciprocal().float().reshape(()).to(grads[0].device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv_scale)
        return found

    def _xsam_loss(self, model) -> torch.Tensor:
        """L at the current weights, normalised as the gradient passes normalise it: every
        micro-batch replayed forward-only through ``training_step``, averaged over workers as
        DDP averages their gradients (so every worker probes the same numbers)."""
        real, probe = self.accelerator, _LossSum(self.accelerator)
        self.accelerator = probe
        try:
            with torch.no_grad():
                for micro in self._xsam_micro:
                    self._xsam_replay(model, micro)
        finally:
            self.accelerator = real
        total = probe.total
        if real.num_processes > 1:
            total = real.reduce(total.reshape(1), reduction="mean").reshape(())
        return total

    # -- logging ------------------------------------------------------------------------------
    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._xsam is not None:
            logs.update(self._xsam_summary())
        return super().log(logs, *args, **kwargs)

    def _xsam_summary(self) -> dict:
        """α in use, and the means since the last log of ‖g_k‖, φ (degrees) and, over the
        searches, the probe maximum and the fraction of searches at the edge."""
        tally, self._xsam_tally = self._xsam_tally, _Tally()
        return {"xsam_alpha": round(self._xsam.alpha, 4), **tally.means()}


def _significant(value) -> float:
    return float(f"{float(value):.6g}")


class _Tally:
    """Running sums of an interval's logged quantities (tensors: no host synchronisation until
    the Trainer logs; nothing grows with the number of updates)."""

    def __init__(self):
        self.updates = self.phis = self.searches = self.edges = 0
        self.gk = self.phi = self.probe_max = self.probed = 0.0

    def add(self, info: core.UpdateInfo) -> None:
        self.updates += 1
        self.gk = self.gk + torch.as_tensor(info.grad_norm, dtype=torch.float32)
        if info.phi is not None:
            self.phi = self.phi + torch.rad2deg(info.phi.float())
            self.phis += 1
        if info.probe_losses is not None:
            self.searches += 1
            self.edges += bool(info.at_edge)
            losses = info.probe_losses.float()
            top = torch.where(torch.isfinite(losses), losses, -math.inf).max()
            finite = torch.isfinite(top)
            self.probe_max = self.probe_max + torch.where(finite, top, 0.0)
            self.probed = self.probed + finite.float()

    def means(self) -> dict:
        out = {}
        if self.updates:
            out["xsam_gk_norm"] = _significant(self.gk / self.updates)
        if self.phis:
            out["xsam_phi"] = _significant(self.phi / self.phis)
        if self.searches:
            out["xsam_alpha_at_edge"] = self.edges / self.searches
            if float(self.probed):
                out["xsam_probe_max"] = _significant(self.probe_max / self.probed)
        return out
