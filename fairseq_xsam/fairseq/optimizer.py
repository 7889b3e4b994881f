"""``--optimizer xsam_adamw``: XSAM around fairseq's Adam (decoupled weight decay, i.e. AdamW).

The optimizer itself only holds state and takes the AdamW step; the extra passes over the
update's batch are run by :mod:`fairseq_xsam.fairseq.glue`, which fairseq's trainer gets when it
builds this optimizer. Its options are those of ``--optimizer adam`` plus XSAM's: the config
dataclass is generated from :data:`fairseq_xsam.settings.OPTIONS` (field, type, default, help),
so the command line, the hydra configs, the README and the PyTorch class agree by construction.
"""

from dataclasses import field, make_dataclass
from typing import Optional

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.optim import FairseqOptimizer, register_optimizer
from fairseq.optim.adam import Adam, FairseqAdam, FairseqAdamConfig
from fairseq.optim.fused_adam import get_fused_adam_class

from .. import settings
from ..core import VARIANTS
from ..optim import HYPERPARAMETERS as XSAM_KEYS
from ..optim import XSAM
from . import options


def _field_type(option: settings.Option):
    if option.choices:
        return ChoiceEnum(list(option.choices))  # argparse choices, checked by hydra too
    return Optional[option.type] if option.default is None else option.type


XSAMAdamWConfig = make_dataclass(
    "XSAMAdamWConfig",
    [(o.name, _field_type(o), field(default=o.config_default,
                                     metadata={"help": settings.help_text(o.name, "cli")}))
     for o in settings.OPTIONS],
    bases=(FairseqAdamConfig,))
XSAMAdamWConfig.__module__ = __name__
XSAMAdamWConfig.__doc__ = ("``--optimizer xsam_adamw``'s config: FairseqAdamConfig's fields and "
                           "one per row of fairseq_xsam.settings.OPTIONS.")


@register_optimizer("xsam_adamw", dataclass=XSAMAdamWConfig)
class XSAMAdamW(FairseqOptimizer):
    """XSAM (Chen & Zhou, ICLR 2026) with fairseq's AdamW as the base optimizer.

    ``--sam-variant sam`` gives SAM, ``fixed`` the WSAM-like baseline, and so on; with any variant
    the descent gradient reaches fairseq's Adam exactly where a plain gradient would, so the
    learning-rate schedule, ``--clip-norm`` and weight decay act on it unchanged.
    """

    @classmethod
    def add_args(cls, parser):
        """The dataclass's options, checked where the command line is parsed (exit status 2 and
        one line naming the option, value and allowed range, before any data is read)."""
        super().add_args(parser)
        options.check_while_parsing(parser)

    def __init__(self, cfg: XSAMAdamWConfig, params):
        """``cfg``'s options were checked where they came in (:mod:`fairseq_xsam.fairseq.options`:
        fairseq-train's command line, or the config fairseq-hydra-train merges into
        :class:`XSAMAdamWConfig`), so they are not checked again here nor by ``XSAM``."""
        super().__init__(cfg)
        if getattr(cfg, "fp16_adam_stats", False):
            raise ValueError("--fp16-adam-stats is not supported by --optimizer xsam_adamw "
                             "(allowed: leave it off)")
        fused = get_fused_adam_class()
        base = fused if (fused is not None and torch.cuda.is_available()
                         and not cfg.use_old_adam and not cfg.tpu) else Adam
        values = settings.resolve({name: getattr(cfg, name) for name in settings.PYTORCH}, "cli")
        self._optimizer = XSAM.from_checked(params, base, values, **self.optimizer_config)
        self._optimizer.option_style = "cli"

    optimizer_config = FairseqAdam.optimizer_config

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        """Like fairseq does for lr and betas, the command line wins over the checkpoint for
        XSAM's options; α and the search clock come from the checkpoint (for 'xsam')."""
        current = {key: self.optimizer.param_groups[0][key] for key in XSAM_KEYS}
        super().load_state_dict(state_dict, {**(optimizer_overrides or {}), **current})
        if not VARIANTS[str(self.cfg.sam_variant)].searches:
            self.optimizer.search_state["alpha"] = float(self.cfg.alpha)

    @property
    def supports_flat_params(self):
        return True  # the math is over a list of tensors; one flat fp32 tensor is such a list

    @property
    def supports_memory_efficient_fp16(self):
        return False  # no fp32 copy of θ to restore from: refused with a message by the glue
