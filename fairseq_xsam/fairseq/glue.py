"""The glue between fairseq's trainer and XSAM: replaying the update's batch.

fairseq's optimizer never sees the batch. The trainer runs ``task.train_step`` per micro-batch,
all-reduces and normalises the gradients, calls :meth:`Trainer.clip_grad_norm`, then
``optimizer.step()``. The glue, attached to the trainer when it builds ``xsam_adamw``:

1. records every micro-batch of the update as ``task.train_step`` receives it (the prepared
   sample, the dummy-batch flag, the random state, so dropout masks can be replayed);
2. records the trainer's normalisation factor (``optimizer.multiply_grads``);
3. at ``clip_grad_norm`` — gradients reduced and normalised, not yet clipped — runs the XSAM
   passes (:func:`fairseq_xsam.core.sharpness_update`): each extra gradient replays all
   micro-batches through the task's own ``train_step`` with the trainer's ``no_sync`` pattern,
   all-reduce and factor; each probe replays them forward-only through the same ``train_step``
   (:func:`forward_only`: its ``optimizer.backward(loss)`` adds the loss up instead of
   differentiating it, so a task that sums several losses, e.g. one per language pair, is
   probed on the same sum); then it leaves the descent
   gradient where the trainer's gradient was, in the units the trainer expects, and lets the
   trainer clip it (so ``--clip-norm`` applies to the descent gradient) and step.

The trainer, task and optimizer methods the glue replaces are listed, with why, in
:mod:`fairseq_xsam.fairseq.patches`.

Precision is handled here, once, by :class:`Precision`: the math runs in fp32 on the tensors
the inner optimizer owns (the model's parameters in fp32 and ``--amp``; the fp32 master copy in
``--fp16``, whose fp16 model weights are refreshed after every move).

Data parallel: by default every extra pass is all-reduced like the trainer's, so all workers
ascend along the global gradient. With ``--sam-local-ascent`` the trainer's pass and the ascent
passes stay local (``no_sync``, no all-reduce): each worker builds its own (u, v) plane from its
shard, the probe losses are still summed over workers (one α everywhere), and the workers'
descent gradients are averaged once, before clipping.

Random state: every pass of an update replays the random state its micro-batch had in the
trainer's pass, so all passes (gradients and probes) see the same dropout masks: L is one
function of θ and α is not picked by dropout noise. Afterwards the random state is put back to
what the trainer's pass left, so the rest of training draws the same numbers as with AdamW.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, List

import torch
from fairseq import distributed_utils, utils
from fairseq.logging import metrics
from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.optim.fp16_optimizer import FP16Optimizer

from .. import core
from ..search_log import search_line
from . import patches

logger = logging.getLogger(__name__)

#: Tasks whose ``train_step`` cannot be replayed: it depends on more than the batch, the weights
#: and the random state. Named by class, so that checking needs no import of the task.
NOT_REPLAYABLE = {
    "OnlineBackTranslationTask": "generates its back-translations with the model inside "
                                 "train_step, so a replay at the moved weights would train on "
                                 "other sentences than the trainer's pass",
}


class _ForwardOnly:
    """The optimizer a probe hands to ``task.train_step``: ``backward(loss)`` adds the (unscaled)
    loss to :attr:`total` instead of differentiating it. Built by :func:`forward_only` as a
    subclass of the trainer's optimizer class with a copy of its attributes, so the task sees the
    optimizer it expects (``FairseqTask.train_step`` turns autocast on for an ``AMPOptimizer``)."""

    total = None

    def backward(self, loss):
        loss = loss.detach().float()
        self.total = loss if self.total is None else self.total + loss


_FORWARD_ONLY_TYPES: dict = {}


def forward_only(wrapper) -> _ForwardOnly:
    """A :class:`_ForwardOnly` stand-in for ``wrapper`` (the trainer's optimizer)."""
    cls = _FORWARD_ONLY_TYPES.get(type(wrapper))
    if cls is None:
        cls = type(f"ForwardOnly{type(wrapper).__name__}", (_ForwardOnly, type(wrapper)), {})
        _FORWARD_ONLY_TYPES[type(wrapper)] = cls
    stand_in = object.__new__(cls)
    stand_in.__dict__.update(vars(wrapper))
    stand_in.total = None
    return stand_in


def replay_refusal(task) -> str:
    """Why ``task``'s train_step cannot be replayed, or '' when it can."""
    for cls in type(task).__mro__:
        if cls.__name__ in NOT_REPLAYABLE:
            return NOT_REPLAYABLE[cls.__name__]
    return ""


@dataclass
class MicroBatch:
    sample: Any
    ignore_grad: bool
    update_num: int
    rng: dict
    kwargs: dict = field(default_factory=dict)


class Precision:
    """Where θ and its fp32 gradient live, and how a pass's gradient reaches true units."""

    def __init__(self, wrapper, inner):
        self.wrapper = wrapper  # what the trainer calls: FP16Optimizer, AMPOptimizer or ours
        self.inner = inner  # XSAMAdamW (the FairseqOptimizer)
        self.mode = ("fp16" if isinstance(wrapper, FP16Optimizer)
                     else "amp" if isinstance(wrapper, AMPOptimizer) else "fp32")

    def grads(self) -> List[torch.Tensor]:
        return [p.grad for p in self.inner.params if p.grad is not None]

    def _scale_grads(self, factor) -> None:
        grads = self.grads()  # one walk over the parameters per call
        torch._foreach_mul_(grads, _on(factor, grads))

    def _amp_scale(self):
        scaler = self.wrapper.scaler
        scale = getattr(scaler, "_scale", None)  # a tensor: no host sync
        return scale if (scaler.is_enabled() and scale is not None) else None

    def to_true_units(self, factor=None) -> None:
        """After backward (+ all-reduce): gradient ← true normalised gradient in fp32.

        ``factor`` is the trainer's normalisation for a replayed pass; None for the trainer's own
        pass, which it already applied (fp32, amp) or recorded (fp16)."""
        if self.mode == "fp16":
            self.wrapper._sync_fp16_grads_to_fp32()
            total = self.wrapper._multiply_factor * (1.0 if factor is None else factor)
            self._scale_grads(total)
            self.wrapper._multiply_factor = 1.0
            return
        total = 1.0 if factor is None else factor
        if self.mode == "amp":
            scale = self._amp_scale()
            if scale is not None:
                total = total / scale.float()
        if not (isinstance(total, float) and total == 1.0):
            self._scale_grads(total)

    def to_trainer_units(self) -> None:
        """Descent gradient (true units) → what the trainer's ``clip_grad_norm`` expects."""
        if self.mode == "amp":
            scale = self._amp_scale()
            if scale is not None:
                self._scale_grads(scale.float())
        # fp16: the fp32 master gradient is final (factor 1, nothing left to sync); fp32: as is

    def moved(self) -> None:
        if self.mode == "fp16":
            self.wrapper._sync_fp32_params_to_fp16()

    def after_clip(self) -> None:
        """--amp: fairseq unscales the inner optimizer in clip_grad_norm and, through
        ``scaler.step(fp32_optimizer)``, a second time in step (ENVIRONMENT.md). Mark the wrapper
        as unscaled too, so AdamW gets the true descent gradient, as in fp32."""
        if self.mode != "amp" or self._amp_scale() is None:
            return
        patches.mark_amp_unscaled(self.wrapper)


def _on(value, like):
    if torch.is_tensor(value) and like:
        return value.to(like[0].device)
    return value


class TrainerGlue:
    """Attached to a fairseq ``Trainer`` whose optimizer is ``xsam_adamw`` (see :func:`attach`)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.micro: List[MicroBatch] = []
        self.factor = None
        self.precision = None
        self._local_checked = False  # --sam-local-ascent's model check, done at its first update
        cfg = trainer.cfg
        if cfg.optimization.use_bmuf:
            raise ValueError("--use-bmuf is not supported by --optimizer xsam_adamw "
                             "(allowed: --ddp-backend c10d, legacy_ddp or no_c10d)")
        if trainer.is_fsdp or cfg.distributed_training.zero_sharding != "none":
            raise ValueError("--ddp-backend fully_sharded and --zero-sharding are not supported "
                             "by --optimizer xsam_adamw (allowed: c10d, legacy_ddp, no_c10d)")
        if cfg.common.tpu:
            raise ValueError("--tpu is not supported by --optimizer xsam_adamw (allowed: GPU/CPU)")
        task = trainer.task
        refusal = replay_refusal(task)
        if refusal:
            raise ValueError(
                f"--optimizer xsam_adamw replays the update's batch through task.train_step, but "
                f"task {type(task).__name__} {refusal} (allowed: tasks whose train_step depends "
                "only on the batch, the weights and the random state, e.g. translation, "
                "multilingual_translation, translation_lev, masked_lm, sentence_prediction)")
        patches.hook_trainer(self)  # sets _train_step, _task_begin_epoch, _clip, _zero_grad
        self.hook_optimizer()

    # -- recording ---------------------------------------------------------------------------
    def hook_optimizer(self):
        # --sam-local-ascent: the gradients are reduced once, after the XSAM passes
        patches.hook_optimizer(self.trainer._optimizer, self._set_factor,
                               lambda: not self.local)

    def _set_factor(self, factor) -> None:
        self.factor = factor

    @property
    def local(self) -> bool:
        """Per-worker ascent: --sam-local-ascent with more than one data-parallel worker."""
        return (self.trainer.data_parallel_world_size > 1
                and bool(getattr(self.inner.cfg, "sam_local_ascent", False)))

    def _start_update(self):
        self.micro, self.factor = [], None
        return self._zero_grad()

    def _record(self, sample, model, criterion, optimizer, update_num, ignore_grad=False,
                **kwargs):
        self.micro.append(MicroBatch(sample, bool(ignore_grad), update_num,
                                     utils.get_rng_state(), kwargs))
        with self._no_sync(final=True):  # a no-op unless local ascent: g_0 stays this worker's
            return self._train_step(sample, model, criterion, optimizer, update_num,
                                    ignore_grad=ignore_grad, **kwargs)

    def _begin_epoch(self, epoch, model):
        self.xsam.begin_epoch(epoch)
        return self._task_begin_epoch(epoch, model)

    # -- the update ---------------------------------------------------------------------------
    @property
    def inner(self):
        wrapper = self.trainer._optimizer
        return getattr(wrapper, "fp32_optimizer", wrapper)

    @property
    def xsam(self):
        return self.inner.optimizer

    def _clip_grad_norm(self, clip_norm):
        if not self.micro or self.factor is None:
            raise RuntimeError(
                "--optimizer xsam_adamw: this update's forward/backward passes did not go through "
                "task.train_step and trainer.train_step, so XSAM cannot replay the batch "
                "(allowed: fairseq's Trainer calling task.train_step for every micro-batch)")
        try:
            self.sharpness()
        finally:
            self.micro, self.factor = [], None
        grad_norm = self._clip(clip_norm)
        self.precision.after_clip()
        return grad_norm

    def sharpness(self) -> core.UpdateInfo:
        self.hook_optimizer()
        wrapper = self.trainer._optimizer
        if getattr(self, "precision", None) is None or self.precision.wrapper is not wrapper:
            self.precision = Precision(wrapper, self.inner)  # rebuilt only with the optimizer
        precision = self.precision
        after_first_pass = utils.get_rng_state()
        precision.to_true_units()
        if self.local:  # every worker must flatten the same tensors in _average_grads
            self._check_local_ascent()
            for p in self.inner.params:  # (legacy_ddp's reduction does the same)
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        try:
            info = self.xsam.sharpness_gradient(
                self._gradient, self._loss, precision.moved,
                skip_search=self._degenerate_everywhere if self.local else bool,
                max_over_workers=self._max_over_workers if self.local else lambda t: t)
        finally:
            utils.set_rng_state(after_first_pass)
        if self.local:
            self._average_grads()
        precision.to_trainer_units()
        self._log(info)
        return info

    def _no_sync(self, final: bool):
        """The trainer's pattern: no gradient sync except in the final micro-batch's backward
        (``final``); under local ascent, never."""
        model = self.trainer.model
        if self.trainer.data_parallel_world_size > 1 and hasattr(model, "no_sync") and (
                not final or self.local):
            return model.no_sync()
        return contextlib.ExitStack()

    def _check_local_ascent(self) -> None:
        if self._local_checked:
            return
        if any(hasattr(p, "expert") for p in self.trainer.model.parameters()):
            raise ValueError("--sam-local-ascent averages every gradient over the workers, but "
                             "this model has unshared (expert) parameters (allowed: leave "
                             "--sam-local-ascent off)")
        self._local_checked = True

    def _degenerate_everywhere(self, degenerate: torch.Tensor) -> bool:
        """Local ascent, search update: skip the probes only if every worker's plane is
        degenerate (a worker with a zero gradient, e.g. only dummy batches, still probes)."""
        count = distributed_utils.all_reduce(degenerate.float().reshape(1),
                                             group=self.trainer.data_parallel_process_group)
        return bool(count.item() == self.trainer.data_parallel_world_size)

    def _max_over_workers(self, value: torch.Tensor) -> torch.Tensor:
        """Local ascent: each worker has its own φ; the π cap of --alpha-max auto uses the
        largest, so every worker probes the same α's."""
        out = value.detach().float().reshape(1).clone()
        distributed_utils.all_reduce(out, group=self.trainer.data_parallel_process_group,
                                     op="max")
        return out.reshape(()).to(value.dtype)

    def _average_grads(self) -> None:
        """Local ascent: the workers' descent gradients (fp32, true units) → their mean."""
        grads = self.precision.grads()
        flat = torch.cat([g.reshape(-1) for g in grads])  # one message, like legacy_ddp
        flat.div_(self.trainer.data_parallel_world_size)
        distributed_utils.all_reduce(flat, group=self.trainer.data_parallel_process_group)
        pieces = flat.split([g.numel() for g in grads])
        torch._foreach_copy_(grads, [p.view_as(g) for p, g in zip(pieces, grads)])

    def _gradient(self):
        """∇L at the current parameters, made exactly like the trainer's pass."""
        trainer, wrapper = self.trainer, self.trainer._optimizer
        wrapper.zero_grad()
        for i, m in enumerate(self.micro):
            utils.set_rng_state(m.rng)
            with self._no_sync(final=i == len(self.micro) - 1):
                self._train_step(m.sample, trainer.model, trainer.criterion, wrapper,
                                 m.update_num, ignore_grad=m.ignore_grad, **m.kwargs)
        wrapper.all_reduce_grads(trainer.model)
        if utils.has_parameters(trainer.criterion):
            wrapper.all_reduce_grads(trainer.criterion)
        self.precision.to_true_units(self.factor)

    def _loss(self) -> torch.Tensor:
        """L at the current parameters, normalised like the gradient: every micro-batch replayed
        forward-only through the task's own train_step (:func:`forward_only`), so the loss is
        the one whose gradient the gradient passes take (the task's sum, its ignore_grad)."""
        trainer = self.trainer
        stand_in = forward_only(trainer._optimizer)
        for m in self.micro:
            utils.set_rng_state(m.rng)
            with torch.no_grad():
                self._train_step(m.sample, trainer.model, trainer.criterion, stand_in,
                                 m.update_num, ignore_grad=m.ignore_grad, **m.kwargs)
        total = stand_in.total
        if total is None:
            raise RuntimeError(f"--optimizer xsam_adamw: task {type(trainer.task).__name__}'s "
                               "train_step never called optimizer.backward(loss), so XSAM "
                               "cannot probe its loss (allowed: tasks that do)")
        if trainer.data_parallel_world_size > 1:
            total = distributed_utils.all_reduce(total, group=trainer.data_parallel_process_group)
        factor = self.factor / trainer.data_parallel_world_size
        return total * (factor.to(total.device) if torch.is_tensor(factor) else factor)

    def _log(self, info: core.UpdateInfo) -> None:
        metrics.log_scalar("xsam_alpha", info.alpha if info.alpha is not None
                           else self.xsam.alpha, weight=1, priority=800, round=2)
        metrics.log_scalar("xsam_gk_norm", info.grad_norm, priority=810, round=3)
        if info.phi is not None:
            metrics.log_scalar("xsam_phi", torch.rad2deg(info.phi), priority=820, round=2)
        if info.probe_losses is not None:
            finite = info.probe_losses[torch.isfinite(info.probe_losses)]
            if finite.numel():
                metrics.log_scalar("xsam_probe_max", finite.max(), priority=830, round=3)
            metrics.log_scalar("xsam_alpha_at_edge", float(bool(info.at_edge)), priority=840,
                               round=2)
            logger.info(search_line(self.trainer.get_num_updates() + 1, info))


def attach(trainer) -> None:
    """Attaches the glue once per trainer, if its optimizer is ``xsam_adamw``."""
    from .optimizer import XSAMAdamW

    wrapper = trainer._optimizer
    inner = getattr(wrapper, "fp32_optimizer", wrapper)
    if not isinstance(inner, XSAMAdamW):
        return
    glue = getattr(trainer, "_xsam_glue", None)
    if glue is None:
        trainer._xsam_glue = TrainerGlue(trainer)
    else:
        glue.hook_optimizer()
