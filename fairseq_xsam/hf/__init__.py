"""XSAM in the Hugging Face ``Trainer`` / ``Seq2SeqTrainer`` (the optional ``hf`` extra).

One change in a training script::

    from fairseq_xsam.hf import equip

    trainer = Seq2SeqTrainer(model=model, args=args, ...)
    equip(trainer, rho=0.05, probe_rho=0.15)      # any option of fairseq_xsam.settings.OPTIONS
    trainer.train()

Importing this sub-package imports transformers and accelerate; ``import fairseq_xsam`` and the
fairseq path never do. Supported and tested: transformers 5.25.0, accelerate 1.16.0 (the
versions the ``hf`` extra pins).
"""

from .trainer import XSAMTrainerMixin, check_options, equip

__all__ = ["equip", "check_options", "XSAMTrainerMixin"]
