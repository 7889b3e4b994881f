"""``--optimizer xsam_adamw``: XSAM around fairseq's Adam (decoupled weight decay, i.e. AdamW).

The optimizer itself only holds state and takes the AdamW step; the extra passes over the
update's batch are run by :mod:`fairseq_xsam.fairseq.glue`, which fairseq's trainer gets when it
builds this optimizer. Options (one dataclass, so CLI, hydra configs and docs agree) are those of
``--optimizer adam`` plus the ones below.
"""


from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.optim import FairseqOptimizer, register_optimizer
from fairseq.optim.adam import Adam, FairseqAdam, FairseqAdamConfig
from fairseq.optim.fused_adam import get_fused_adam_class

from ..core import VARIANTS
from ..optim import HYPERPARAMETERS as XSAM_KEYS, XSAM
from ..settings import check
from . import options

SAM_VARIANT_CHOICES = ChoiceEnum(list(VARIANTS))  # argparse choices, checked by hydra too


@dataclass
class XSAMAdamWConfig(FairseqAdamConfig):
    rho: float = field(default=0.15, metadata={
        "help": "total ascent radius rho > 0 (paper, IWSLT14: 0.15); each ascent step moves rho/k"})
    probe_rho: float = field(default=0.45, metadata={
        "help": "probe radius rho' > 0 of the alpha search (paper, IWSLT14: 0.45; usually 2-3 rho)"})
    ascent_steps: int = field(default=1, metadata={
        "help": "ascent steps k >= 1; an update costs k+1 forward/backward passes"})
    sam_variant: SAM_VARIANT_CHOICES = field(default="xsam", metadata={
        "help": "descent direction: " + ", ".join(VARIANTS) + " (xsam searches alpha; fixed uses "
                "--alpha; sam/msam/msam+/lsam/lsam+ are the paper's baselines)"})
    alpha: float = field(default=1.0, metadata={
        "help": "interpolation factor alpha in [0, --alpha-max] (auto: up to 2 + "
                "--alpha-expand-probes x --alpha-step): fixed for --sam-variant fixed, "
                "initial value for xsam (1 = SAM's direction, 0 = the ascent direction)"})
    alpha_max: str = field(default="2.0", metadata={
        "help": "largest alpha searched (> 0), or 'auto': search 0..2, then, while the loss "
                "still rises, go on in steps of --alpha-step up to the direction opposite the "
                "ascent (alpha*phi <= pi) and at most --alpha-expand-probes extra probes"})
    alpha_step: float = field(default=0.1, metadata={
        "help": "alpha grid step, 0 < step <= --alpha-max (0.1 and 2.0 give 21 probes)"})
    alpha_expand_probes: int = field(default=40, metadata={
        "help": "--alpha-max auto: the most extra probes (forward passes) past alpha = 2 per "
                "search, >= 1 (40 with step 0.1 reach alpha = 6)"})
    alpha_search: Optional[str] = field(default=None, metadata={
        "help": "when to search alpha: 'epoch' (first update of every epoch; default for xsam), "
                "'never' (default for the other variants), or N = every N updates"})
    adaptive: bool = field(default=False, metadata={
        "help": "ASAM's adaptive ascent: scale it element-wise by abs(w) + --asam-eta"})
    asam_eta: float = field(default=0.01, metadata={"help": "eta of ASAM (>= 0)"})
    sam_local_ascent: bool = field(default=False, metadata={
        "help": "data parallel: each worker ascends along its own gradient (no all-reduce in the "
                "ascent passes) and the workers' descent gradients are averaged once; probe losses "
                "are still summed over workers, so all pick the same alpha. Default: every pass "
                "is all-reduced, as the trainer's pass"})


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
        super().__init__(cfg)
        variant = str(cfg.sam_variant)  # a fairseq ChoiceEnum member in a merged config
        self.schedule = check(rho=cfg.rho, probe_rho=cfg.probe_rho,
                              ascent_steps=cfg.ascent_steps, variant=variant,
                              alpha=cfg.alpha, alpha_max=cfg.alpha_max,
                              alpha_step=cfg.alpha_step, search=cfg.alpha_search,
                              adaptive=cfg.adaptive, asam_eta=cfg.asam_eta,
                              alpha_expand_probes=cfg.alpha_expand_probes, cli=True)
        if getattr(cfg, "fp16_adam_stats", False):
            raise ValueError("--fp16-adam-stats is not supported by --optimizer xsam_adamw "
                             "(allowed: leave it off)")
        fused = get_fused_adam_class()
        base = fused if (fused is not None and torch.cuda.is_available()
                         and not cfg.use_old_adam and not cfg.tpu) else Adam
        self._optimizer = XSAM(
            params, base, rho=cfg.rho, probe_rho=cfg.probe_rho, ascent_steps=cfg.ascent_steps,
            variant=variant, alpha=cfg.alpha, alpha_max=cfg.alpha_max,
            alpha_step=cfg.alpha_step, search_every=self.schedule, adaptive=cfg.adaptive,
            asam_eta=cfg.asam_eta, alpha_expand_probes=cfg.alpha_expand_probes,
            **self.optimizer_config)
        self._optimizer.cli_names = True

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
