"""fairseq registration: ``--optimizer xsam_adamw``, the trainer hook that attaches the glue,
the option checks and the checkpoint types for torch's safe loader.

Importing this package registers them (:func:`register`): ``--user-dir fairseq_xsam`` imports
``fairseq_xsam`` from inside fairseq, which then imports this package; so does any import of
``fairseq_xsam.fairseq.*``. ``import fairseq_xsam`` alone, for the PyTorch class, neither
imports nor patches fairseq. A process that imported ``fairseq_xsam`` before fairseq and then
runs fairseq in-process with ``--user-dir fairseq_xsam`` (which fairseq skips for an
already-imported package) registers with ``import fairseq_xsam.fairseq``.

Registering wraps two fairseq functions, ``Trainer._build_optimizer`` (after it, the glue
:class:`~fairseq_xsam.fairseq.glue.TrainerGlue` attaches when, and only when, the optimizer is
``xsam_adamw``) and ``merge_with_parent`` (checks ``xsam_adamw``'s options where
fairseq-hydra-train's config meets the dataclass); every patch of fairseq, these and the ones the
glue and the option checks apply, is listed in :mod:`fairseq_xsam.fairseq.patches` with why it
is needed. Other optimizers are untouched. Nothing is changed in the process environment:
checkpoints load with torch's ``weights_only=True``.
"""

from __future__ import annotations

import logging

from . import patches

logger = logging.getLogger(__name__)


def _before_build(trainer) -> None:
    """Before fairseq builds the optimizer: refuse what ``xsam_adamw`` cannot run on."""
    if (getattr(trainer.cfg.optimizer, "_name", None) == "xsam_adamw"
            and (trainer.cfg.common.memory_efficient_fp16
                 or trainer.cfg.common.memory_efficient_bf16)):
        raise ValueError(
            "--memory-efficient-fp16 is not supported by --optimizer xsam_adamw: it keeps no "
            "fp32 copy of the weights to restore after the ascent (allowed: --fp16 or --amp)")


def _after_build(trainer) -> None:
    """After fairseq builds the optimizer: the glue attaches if it is ``xsam_adamw``."""
    from .glue import attach

    attach(trainer)


def register():
    """Registers ``xsam_adamw`` and its checks (idempotent) and allows fairseq checkpoints for
    torch's safe loader (:mod:`fairseq_xsam.fairseq.checkpoints`)."""
    from fairseq.optim import OPTIMIZER_DATACLASS_REGISTRY, OPTIMIZER_REGISTRY

    from . import checkpoints, options

    checkpoints.register()

    if "xsam_adamw" not in OPTIMIZER_REGISTRY:
        from . import optimizer  # noqa: F401  (registers on import)
    patches.patch_build_optimizer(_before_build, _after_build)
    patches.patch_merge_with_parent(OPTIMIZER_DATACLASS_REGISTRY["xsam_adamw"],
                                    options.check_merged)


register()
