r"""XSAM for plain PyTorch: a wrapper around any ``torch.optim`` optimizer.

.. math::
   \begin{aligned}
   &\textbf{input}: \theta, \rho, \rho', k, \alpha, \text{base optimizer } B \\
   &\theta_0 = \theta,\quad g_i = \nabla L(\theta_i),\quad
     \theta_{i+1} = \theta_i + \tfrac{\rho}{k}\, g_i/\lVert g_i\rVert \quad (i < k) \\
   &u = \tfrac{\theta_k-\theta}{\lVert\theta_k-\theta\rVert},\quad v = \tfrac{g_k}{\lVert g_k\rVert},
     \quad \phi = \angle(u, v) \\
   &d(\alpha) = \tfrac{\sin((1-\alpha)\phi)\,u + \sin(\alpha\phi)\,v}{\sin\phi} \\
   &\text{on search steps: } \alpha \leftarrow \arg\max_{\alpha \in \{0,\Delta,\dots,\alpha_{max}\}}
     L(\theta + \rho' d(\alpha)) \quad (\alpha_{max} = \text{auto: on past 2 while } L
     \text{ rises}, \alpha\phi \le \pi) \\
   &\theta \leftarrow B\big(\theta,\ \lVert g_k\rVert\, d(\alpha)\big)
   \end{aligned}

Chen & Zhou, "Revisiting Sharpness-Aware Minimization: A More Faithful and Effective
Implementation", ICLR 2026 (Sec. 4, Algorithm 1). The math lives in :mod:`fairseq_xsam.core`.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Optional

import torch

from . import core, settings

logger = logging.getLogger(__name__)

#: XSAM's settings kept in every param group (α itself is the search clock's, not a setting's).
HYPERPARAMETERS = tuple(name for name in settings.PYTORCH if name != "alpha")
#: Keywords of earlier versions: accepted with a DeprecationWarning (and read from old state
#: dicts' param groups) under the option's one name.
RENAMED = {"variant": "sam_variant", "search_every": "alpha_search"}
_D = settings.DEFAULTS


class XSAM(torch.optim.Optimizer):
    r"""eXplicit Sharpness-Aware Minimization around a base optimizer.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer.
        base_optimizer: the optimizer class taking the descent step (``torch.optim.SGD``, AdamW…);
            it is built on this optimizer's ``param_groups`` with the remaining ``**kwargs``.

    XSAM's options, keyword only, with the names, defaults and rules of
    :data:`fairseq_xsam.settings.OPTIONS` (``xsam_adamw``'s fields; ``--probe-rho`` is
    ``probe_rho``); an invalid value raises :class:`~fairseq_xsam.settings.OptionError`, a
    ``ValueError``:

{options}

    ``sam_variant``: 'xsam' (search α), 'fixed' (fixed α, the WSAM-like baseline), 'sam', 'msam',
    'msam+', 'lsam', 'lsam+' (see ``fairseq_xsam.core.VARIANTS``). ``alpha_search`` N > 0
    searches on steps 1, N+1, 2N+1, …; 0 or 'never' never; 'epoch' on the first step after each
    :meth:`begin_epoch`. ``alpha_max='auto'``: search 0, Δ, …, 2, then, if the loss still rises
    at 2, go on at 2 + Δ, 2 + 2Δ, … while it rises, α·φ ≤ π and at most
    ``alpha_expand_probes`` extra probes. Every search sets ``at_edge`` on the
    :class:`~fairseq_xsam.core.UpdateInfo` it returns (α* is the last probe: the maximum may lie
    beyond); the first time in a run, one ``logging`` warning names the option to change.

    ``step(closure)``: ``closure()`` returns the batch loss; it must not call ``backward`` or
    ``zero_grad`` (the optimizer does, k + 1 times, and calls it under ``torch.no_grad()`` for the
    probes). Every pass of one step sees the random state the step started with, so dropout masks
    are the same in all of them (the probes compare one function), and the random stream after the
    step is the one a plain step would leave. ``step()`` without a closure applies a descent
    gradient prepared by :meth:`sharpness_gradient` (the fairseq glue does that).
    """

    def __init__(self, params, base_optimizer, *, rho: float = _D["rho"],
                 probe_rho: float = _D["probe_rho"], ascent_steps: int = _D["ascent_steps"],
                 sam_variant: str = _D["sam_variant"], alpha_max=_D["alpha_max"],
                 alpha_step: float = _D["alpha_step"],
                 alpha_expand_probes: int = _D["alpha_expand_probes"], alpha: float = _D["alpha"],
                 alpha_search=_D["alpha_search"], adaptive: bool = _D["adaptive"],
                 asam_eta: float = _D["asam_eta"], **kwargs):
        given = {name: value for name, value in locals().items() if name in settings.PYTORCH}
        for old, new in RENAMED.items():
            if old in kwargs:
                warnings.warn(f"XSAM({old}=...) is now XSAM({new}=...), the option's name "
                              "everywhere", DeprecationWarning, stacklevel=2)
                if given[new] != _D[new]:
                    raise TypeError(f"XSAM() got both {old} and {new} (allowed: {new} only)")
                given[new] = kwargs.pop(old)
        self._setup(params, base_optimizer, settings.check_kwargs(given), kwargs)

    @classmethod
    def from_checked(cls, params, base_optimizer, values, **kwargs) -> "XSAM":
        """An XSAM from options an entry point has checked and resolved
        (:func:`fairseq_xsam.settings.resolve`): fairseq's ``xsam_adamw`` builds it so, without
        checking its options a second time."""
        self = cls.__new__(cls)
        self._setup(params, base_optimizer, values, kwargs)
        return self

    def _setup(self, params, base_optimizer, values, kwargs):
        super().__init__(params, {key: values[key] for key in HYPERPARAMETERS})
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults.update(self.base_optimizer.defaults)
        # The search clock: α, committed steps, the epoch and the last epoch that searched.
        self.search_state = {"alpha": float(values["alpha"]), "step": 0, "epoch": 1,
                             "searched_epoch": None}
        self._backup = None  # θ's copy during a step: scratch, never saved
        self._backup_key = None
        self._prepared: Optional[core.UpdateInfo] = None
        self.option_style = "python"  # option names in messages: alpha_max, or --alpha-max
        self._edge_warned = False  # the edge warning is given once per run (not saved)

    # -- the search clock ----------------------------------------------------------------
    @property
    def alpha(self) -> float:
        """The α in use (float)."""
        return self.search_state["alpha"]

    def begin_epoch(self, epoch: int) -> None:
        """Tells the optimizer a new epoch starts (for ``alpha_search='epoch'``)."""
        self.search_state["epoch"] = int(epoch)

    def search_due(self) -> bool:
        """Whether the next step searches α."""
        schedule = self.hyper["alpha_search"]
        if not core.VARIANTS[self.hyper["sam_variant"]].searches or schedule == 0:
            return False
        if schedule == "epoch":
            return self.search_state["searched_epoch"] != self.search_state["epoch"]
        return self.search_state["step"] % schedule == 0

    @property
    def hyper(self) -> dict:
        """XSAM's settings (one ascent over all groups, so every group must agree)."""
        first = self.param_groups[0]
        for group in self.param_groups[1:]:
            for key in HYPERPARAMETERS:
                if group[key] != first[key]:
                    raise ValueError(f"Invalid param group: {key}={group[key]!r} differs from the "
                                     f"first group's {first[key]!r} (XSAM ascends over all "
                                     "parameters at once; allowed: the same value in every group)")
        return {key: first[key] for key in HYPERPARAMETERS}

    # -- the update -------------------------------------------------------------------------
    def _params(self):
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    def sharpness_gradient(self, compute_grad: Callable, compute_loss: Optional[Callable] = None,
                           moved: Callable[[], None] = lambda: None,
                           search: Optional[bool] = None,
                           skip_search: Callable[[torch.Tensor], bool] = bool,
                           max_over_workers: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
                           ) -> core.UpdateInfo:
        """Replaces the gradients g_0 (already in ``p.grad``) by the descent gradient.

        ``compute_grad()`` must leave ∇L at the current parameters in their ``.grad`` (zeroing them
        first); ``compute_loss()`` returns L at the current parameters without gradients;
        ``skip_search`` decides, from the plane's degeneracy, whether a due search is skipped,
        and ``max_over_workers`` makes the π cap of ``alpha_max='auto'`` agree across workers
        (they become the update's :class:`fairseq_xsam.core.Passes`). The
        parameters are restored bit-exactly before this returns, also when a pass raises. The α a
        search finds is committed by the next :meth:`step`.
        """
        h = self.hyper
        theta = self._params()
        key = tuple(map(id, theta))
        if self._backup is None or self._backup_key != key:
            self._backup = [torch.empty_like(p) for p in theta]
            self._backup_key = key
        search = self.search_due() if search is None else search
        if search and compute_loss is None:
            raise ValueError("an α search needs compute_loss")

        def grads_of_theta():
            with torch.enable_grad():
                compute_grad()
            for p in theta:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            return [p.grad for p in theta]

        passes = core.Passes(grads_of_theta, compute_loss, moved, skip_search, max_over_workers)
        plan = core.Search.plan(h["alpha_max"], h["alpha_step"], h["alpha_expand_probes"],
                                h["probe_rho"]) if search else None
        with torch.no_grad():
            info = core.sharpness_update(
                theta, [p.grad for p in theta], self._backup, passes, rho=h["rho"],
                ascent_steps=h["ascent_steps"], variant=h["sam_variant"], alpha=self.alpha,
                search=plan, adaptive=h["adaptive"], asam_eta=h["asam_eta"])
        if info.searched and info.probe_losses is not None and not bool(
                torch.isfinite(info.probe_losses).any()):
            logger.warning("XSAM: every probe loss is non-finite; keeping alpha=%s", self.alpha)
        if info.at_edge and not self._edge_warned:
            self._edge_warned = True
            logger.warning(settings.edge_advice(info.edge, info.alpha, h["alpha_max"],
                                                h["alpha_expand_probes"], self.option_style))
        self._prepared = info
        return info

    @torch.no_grad()
    def step(self, closure=None):
        """One XSAM step (with ``closure``), or the base step on a prepared descent gradient."""
        loss = None
        if closure is not None:
            loss = self._closure_step(closure)
        if self._prepared is None:
            raise RuntimeError(
                "XSAM.step() needs a closure that returns the batch loss (XSAM evaluates the loss "
                "k + 1 times per step); without one, call sharpness_gradient() first")
        info, self._prepared = self._prepared, None
        self.base_optimizer.step()
        self.search_state["step"] += 1
        if info.searched:
            self.search_state["alpha"] = info.alpha
            self.search_state["searched_epoch"] = self.search_state["epoch"]
        return loss

    def _closure_step(self, closure):
        devices = sorted({p.device for g in self.param_groups for p in g["params"]
                          if p.device.type == "cuda"}, key=str)
        start = _rng_state(devices)

        def gradient():
            # set_to_none: backward then hands over its gradient tensors; zeroing them first would
            # cost two sweeps per pass (the zeroing, and backward adding into the zeros)
            self.zero_grad(set_to_none=True)
            _set_rng_state(start, devices)
            with torch.enable_grad():
                value = closure()
                value.backward()
            return value

        loss = gradient()
        after = _rng_state(devices)  # the stream a plain step would continue with

        def probe():
            _set_rng_state(start, devices)
            return closure()

        try:
            self.sharpness_gradient(gradient, probe)
        finally:
            _set_rng_state(after, devices)
        return loss.detach()

    # -- saving ---------------------------------------------------------------------------------
    def state_dict(self):
        state = self.base_optimizer.state_dict()
        state["xsam"] = dict(self.search_state)
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        search = state_dict.pop("xsam", None)
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        for group in self.param_groups:
            for old, new in RENAMED.items():  # saved under an earlier keyword
                if old in group:
                    group.setdefault(new, group.pop(old))
            for key in HYPERPARAMETERS:  # saved before a setting existed: its default
                group.setdefault(key, self.defaults[key])
        if search is not None:
            self.search_state = dict(search)


def _rng_state(devices):
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng_state(state, devices):
    torch.set_rng_state(state[0])
    for device, s in zip(devices, state[1]):
        torch.cuda.set_rng_state(s, device)


if XSAM.__doc__:  # the options' list comes from the table (none under python -OO)
    XSAM.__doc__ = XSAM.__doc__.replace("{options}", settings.describe("python"))
