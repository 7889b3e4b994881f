"""fairseq registration: ``--optimizer xsam_adamw``, the trainer hook that attaches the glue,
the option checks and the checkpoint types for torch's safe loader.

Importing this package registers them (:func:`register`): ``--user-dir fairseq_xsam`` imports
``fairseq_xsam`` from inside fairseq, which then imports this package; so does any import of
``fairseq_xsam.fairseq.*``. ``import fairseq_xsam`` alone, for the PyTorch class, neither
imports nor patches fairseq. A process that imported ``fairseq_xsam`` before fairseq and then
runs fairseq in-process with ``--user-dir fairseq_xsam`` (which fairseq skips for an
already-imported package) registers with ``import fairseq_xsam.fairseq``.

Two fairseq functions are wrapped, each named and idempotent: :func:`_patch_trainer` (after
``Trainer._build_optimizer`` it attaches :class:`~fairseq_xsam.fairseq.glue.TrainerGlue` when, and
only when, the optimizer is ``xsam_adamw``) and
:func:`fairseq_xsam.fairseq.options.patch_merge_with_parent` (checks ``xsam_adamw``'s options where
fairseq-hydra-train's config meets the dataclass). Other optimizers are untouched. Nothing is
changed in the process environment: checkpoints load with torch's ``weights_only=True``.
"""

from __future__ import annotations

import functools
import logging

logger = logging.getLogger(__name__)


def _patch_trainer():
    from fairseq.trainer import Trainer

    if getattr(Trainer._build_optimizer, "_xsam_patched", False):
        return
    build = Trainer._build_optimizer

    @functools.wraps(build)
    def _build_optimizer(self):
        if (getattr(self.cfg.optimizer, "_name", None) == "xsam_adamw"
                and (self.cfg.common.memory_efficient_fp16
                     or self.cfg.common.memory_efficient_bf16)):
            raise ValueError(
                "--memory-efficient-fp16 is not supported by --optimizer xsam_adamw: it keeps no "
                "fp32 copy of the weights to restore after the ascent (allowed: --fp16 or --amp)")
        build(self)
        from .glue import attach

        attach(self)

    _build_optimizer._xsam_patched = True
    Trainer._build_optimizer = _build_optimizer


def register():
    """Registers ``xsam_adamw`` and its checks (idempotent) and allows fairseq checkpoints for
    torch's safe loader (:mod:`fairseq_xsam.fairseq.checkpoints`)."""
    from fairseq.optim import OPTIMIZER_DATACLASS_REGISTRY, OPTIMIZER_REGISTRY

    from . import checkpoints, options

    checkpoints.register()

    if "xsam_adamw" not in OPTIMIZER_REGISTRY:
        from . import optimizer  # noqa: F401  (registers on import)
    _patch_trainer()
    options.patch_merge_with_parent(OPTIMIZER_DATACLASS_REGISTRY["xsam_adamw"])


register()
