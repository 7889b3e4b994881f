"""Every change this package makes to fairseq's own objects, in one place.

Checked against fairseq 0.12.3.1 (the ``fairseq-fixed`` distribution that ``scripts/install.sh``
installs; the code paths named below are those of that version). Each function here is
idempotent and leaves other optimizers as fairseq made them; the logic each patch runs (option
rules, the batch replay) lives in :mod:`.options` and :mod:`.glue`, which call these functions.

1. ``Trainer._build_optimizer`` (the class's, process-wide), wrapped when the plugin is imported
   (``register()``): :func:`patch_build_optimizer`. Why: fairseq has no hook after it builds the
   optimizer; the glue attaches to the trainer there, only for ``xsam_adamw``, and
   ``--memory-efficient-fp16`` is refused before anything is built.
2. ``fairseq.dataclass.utils.merge_with_parent`` (the module's), wrapped when the plugin is
   imported: :func:`patch_merge_with_parent`. Why: fairseq-hydra-train's composed ``optimizer``
   config meets the dataclass there, before any data is read: the one place to check its values
   (one line, exit status 2). Other dataclasses pass through; fairseq's ``build_optimizer``
   imported the original by name and is not affected.
3. The training parser's ``parse_known_args`` and ``error``, and the ``type`` of xsam_adamw's
   arguments (that parser instance), from ``XSAMAdamW.add_args``, i.e. only with ``--optimizer
   xsam_adamw`` on the command line: :func:`patch_parser`. Why: argparse checks one value at a
   time; the cross-option rules (``--alpha`` ≤ ``--alpha-max``) need the parsed namespace, and an
   error about these options is one line without the usage block.
4. ``task.train_step`` and ``task.begin_epoch`` (the trainer's task instance), when the glue
   attaches to a trainer: :func:`hook_trainer`. Why: ``train_step`` is where each micro-batch is
   seen, so the XSAM passes can replay it (sample, dummy flag, random state); ``begin_epoch``
   drives ``--alpha-search epoch``.
5. ``trainer.clip_grad_norm`` and ``trainer.zero_grad`` (the trainer instance), same time:
   :func:`hook_trainer`. Why: ``clip_grad_norm`` is the one point where the gradient is reduced
   and normalised but not yet clipped: the XSAM passes run there and leave the descent gradient
   for the trainer to clip and step; ``zero_grad`` starts an update.
6. The optimizer wrapper's ``multiply_grads`` and ``all_reduce_grads`` (the FP16Optimizer,
   AMPOptimizer or XSAMAdamW instance), for each optimizer the trainer builds:
   :func:`hook_optimizer`. Why: a replayed pass needs the trainer's normalisation factor; under
   ``--sam-local-ascent`` the trainer's all-reduce waits until after the XSAM passes.
7. The ``--amp`` GradScaler's per-optimizer state (``_per_optimizer_states``), after every clip
   under a live loss scale: :func:`mark_amp_unscaled`. Why: fairseq unscales twice under
   ``--amp`` (in ``clip_grad_norm``, then in ``scaler.step`` of the fp32 optimizer); marking the
   wrapped fp32 optimizer as unscaled too gives AdamW the true descent gradient, as in fp32.

Not patches: :mod:`.checkpoints` registers fairseq's checkpoint types with torch's safe loader
(``torch.serialization.add_safe_globals``; fairseq untouched), and the probes hand
``task.train_step`` a stand-in optimizer object (:func:`.glue.forward_only`), not a changed one.
"""

from __future__ import annotations

import argparse
import functools
from typing import Callable, Dict, Optional, Tuple


def patch_build_optimizer(before: Callable, after: Callable) -> None:
    """1: ``Trainer._build_optimizer`` calls ``before(trainer)``, builds, then ``after(trainer)``.
    Marked ``_xsam_patched``."""
    from fairseq.trainer import Trainer

    if getattr(Trainer._build_optimizer, "_xsam_patched", False):
        return
    build = Trainer._build_optimizer

    @functools.wraps(build)
    def _build_optimizer(self):
        before(self)
        build(self)
        after(self)

    _build_optimizer._xsam_patched = True
    Trainer._build_optimizer = _build_optimizer


def patch_merge_with_parent(config_class: type, check: Callable) -> None:
    """2: ``merge_with_parent(dc, cfg, ...)`` runs ``check(cfg)`` first when ``dc`` is
    ``config_class`` or an instance of it. Marked ``_xsam_patched``."""
    from fairseq.dataclass import utils

    merge = utils.merge_with_parent
    if getattr(merge, "_xsam_patched", False):
        return

    @functools.wraps(merge)
    def merge_with_parent(dc, cfg, *args, **kwargs):
        if (isinstance(dc, config_class)
                or (isinstance(dc, type) and issubclass(dc, config_class))):
            check(cfg)
        return merge(dc, cfg, *args, **kwargs)

    merge_with_parent._xsam_patched = True
    utils.merge_with_parent = merge_with_parent


def patch_parser(parser: argparse.ArgumentParser, types: Dict[str, Callable],
                 check: Callable[[argparse.Namespace], Optional[str]],
                 one_line: Tuple[str, ...]) -> None:
    """3: the arguments named in ``types`` (those with a type and no choices) convert with it;
    after ``parse_known_args``, ``check(namespace)`` may return an error for ``parser.error``;
    an error message starting with one of ``one_line`` ends the program as ``PROG: error: ...``
    with exit status 2, without the usage block. Marked ``_xsam_checks`` on the parser."""
    for action in parser._actions:
        if action.dest in types and action.type is not None and not action.choices:
            action.type = types[action.dest]
    if getattr(parser, "_xsam_checks", False):
        return
    parser._xsam_checks = True
    parse_known_args, error = parser.parse_known_args, parser.error

    def checked_parse_known_args(args=None, namespace=None):
        namespace, extra = parse_known_args(args, namespace)
        message = check(namespace)
        if message:
            parser.error(message)
        return namespace, extra

    def one_line_error(message):
        if message.startswith(one_line):
            parser.exit(2, f"{parser.prog}: error: {message}\n")
        error(message)

    parser.parse_known_args = checked_parse_known_args
    parser.error = one_line_error


def hook_trainer(glue) -> None:
    """4 and 5: the trainer's task and the trainer call the glue's ``_record``,
    ``_begin_epoch``, ``_clip_grad_norm`` and ``_start_update``; the originals are kept on the
    glue as ``_train_step``, ``_task_begin_epoch``, ``_clip`` and ``_zero_grad``."""
    trainer = glue.trainer
    task = trainer.task
    glue._train_step, task.train_step = task.train_step, glue._record
    glue._task_begin_epoch, task.begin_epoch = task.begin_epoch, glue._begin_epoch
    glue._clip, trainer.clip_grad_norm = trainer.clip_grad_norm, glue._clip_grad_norm
    glue._zero_grad, trainer.zero_grad = trainer.zero_grad, glue._start_update


def hook_optimizer(wrapper, on_factor: Callable, reduce_now: Callable[[], bool]) -> None:
    """6: ``wrapper.multiply_grads(c)`` hands ``c`` to ``on_factor`` first;
    ``wrapper.all_reduce_grads(module)`` reduces only if ``reduce_now()``. Marked
    ``_xsam_factor_hooked`` on the wrapper."""
    if getattr(wrapper, "_xsam_factor_hooked", False):
        return
    multiply, reduce = wrapper.multiply_grads, wrapper.all_reduce_grads

    def multiply_grads(c):
        on_factor(c)
        return multiply(c)

    def all_reduce_grads(module):
        if reduce_now():
            return reduce(module)

    wrapper.multiply_grads = multiply_grads
    wrapper.all_reduce_grads = all_reduce_grads
    wrapper._xsam_factor_hooked = True


def mark_amp_unscaled(wrapper) -> None:
    """7: the AMPOptimizer ``wrapper``'s fp32 optimizer shares the unscaled state its wrapped
    optimizer got in ``clip_grad_norm``, so ``scaler.step`` does not unscale it again."""
    states = wrapper.scaler._per_optimizer_states
    states[id(wrapper.fp32_optimizer)] = states[id(wrapper.optimizer)]
