"""fairseq registration: ``--optimizer xsam_adamw`` and the trainer hook that attaches the glue.

The one change to fairseq's classes is :func:`_patch_trainer`: after ``Trainer._build_optimizer``
it attaches :class:`~fairseq_xsam.fairseq.glue.TrainerGlue` when (and only when) the optimizer is
``xsam_adamw``; other optimizers are untouched.
"""

from __future__ import annotations

import functools
import logging
import os

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
    """Registers ``xsam_adamw`` (idempotent) and makes fairseq checkpoints loadable."""
    # torch >= 2.6 loads with weights_only=True, which rejects fairseq checkpoints (they pickle
    # argparse/omegaconf objects): resume and fairseq-generate would fail on day one.
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    from fairseq.optim import OPTIMIZER_REGISTRY

    if "xsam_adamw" not in OPTIMIZER_REGISTRY:
        from . import optimizer  # noqa: F401  (registers on import)
    _patch_trainer()
