r"""Direction fidelity: how well a descent direction points at the worst case nearby.

The paper's argument for XSAM (Sections 3-4, Proposition 1, Appendix Figure 14(b)): the
direction SAM applies at θ, g_k, approximates the direction from θ towards the maximum of the
loss in the neighbourhood better than the local gradient g_0, but often poorly, and XSAM's
d(α*) approximates it better. This module measures that on one loss L (one batch):

1. the worst case within radius r, max over ‖δ‖ ≤ r of L(θ + δ), by projected normalised
   gradient ascent (:func:`worst_case`): from each start δ, propose δ' = P(δ + η·r·g/‖g‖) with
   g = ∇L(θ + δ) and P the projection onto the ball; keep δ' if the loss rose, else halve η;
   the best end point over the starts is δ*;
2. the candidate directions (:func:`directions`), each computed by the optimizer's own code
   (:func:`fairseq_xsam.core.sharpness_update`): g_0 (SGD), g_k applied at θ (SAM, k ascent
   steps of total radius ρ), XSAM's d(α*) with α searched on this L at probe radius ρ' (the
   paper's grid, and the expanding search), and d(α) with an α found elsewhere;
3. for each unit direction d (:func:`score`): the cosine to δ*/‖δ*‖ and the fraction of the
   worst-case rise it reaches, [L(θ + r·d) − L(θ)] / [L(θ + δ*) − L(θ)].

Every function that moves θ restores it bit for bit before it returns. ``evaluate(grad)`` is
the caller's closure: L at the current θ as a 0-dim tensor and, if ``grad``, the list ∇L.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..core import (TINY, Expansion, Passes, Search, alpha_grid, global_norm, sharpness_update)

TensorList = List[Tensor]
Evaluate = Callable[[bool], Tuple[Tensor, Optional[TensorList]]]

#: A start whose last accepted step still raised the loss by more than this fraction of its
#: total rise is reported as not converged.
CONVERGED_RISE = 1e-4


def dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """⟨x, y⟩ over lists of tensors, accumulated in float64."""
    return torch.stack([torch.vdot(x.reshape(-1).double(), y.reshape(-1).double())
                        for x, y in zip(xs, ys)]).sum()


def unit(tensors: Sequence[Tensor]) -> TensorList:
    """x/‖x‖ as a new list (a zero x stays zero)."""
    return torch._foreach_div(list(tensors), global_norm(tensors).clamp_min(TINY))


def _moved_loss(theta: TensorList, origin: TensorList, step: TensorList, scale: float,
                evaluate: Evaluate) -> Tensor:
    """L(origin + scale·step), θ left there."""
    torch._foreach_copy_(theta, origin)
    torch._foreach_add_(theta, step, alpha=scale)
    return evaluate(False)[0].detach().double()


@dataclass
class Ascent:
    """One start of the projected ascent."""

    delta: TensorList
    loss: float
    curve: List[float]  # the loss after every step (rejected steps repeat the last value)
    converged: bool


@dataclass
class WorstCase:
    """max over ‖δ‖ ≤ r of L(θ + δ), as far as the ascent found it."""

    radius: float
    base_loss: float  # L(θ)
    loss: float  # L(θ + δ*)
    delta: TensorList  # δ*
    best_start: int
    starts: List[Ascent] = field(default_factory=list)

    @property
    def rise(self) -> float:
        return self.loss - self.base_loss


def project_(delta: TensorList, radius: float) -> None:
    """δ ← δ·min(1, r/‖δ‖): the nearest point of the ball of radius r."""
    norm = global_norm(delta)
    torch._foreach_mul_(delta, torch.clamp(radius / norm.clamp_min(TINY), max=1.0))


def ascend(theta: TensorList, evaluate: Evaluate, radius: float, start: Sequence[Tensor], *,
           base_loss: float, steps: int = 30, first_step: float = 1.0, max_step: float = 8.0,
           min_step: float = 1e-3) -> Ascent:
    """Projected normalised gradient ascent from θ + ``start`` within the ball of ``radius``
    (one forward/backward pass a step). The step η·r starts at ``first_step``·r, doubles (up to
    ``max_step``·r) after a proposal that raised the loss and is quartered after one that did
    not (a large η·r makes the proposal r·g/‖g‖ after projection: the step then only turns δ
    towards the gradient); the ascent stops after ``steps`` proposals or when η < ``min_step``.
    θ is restored on return."""
    origin = [t.detach().clone() for t in theta]
    delta = [s.detach().clone() for s in start]
    project_(delta, radius)
    try:
        torch._foreach_add_(theta, delta)
        loss, grad = evaluate(True)
        loss = float(loss)
        curve, eta, rises = [], first_step, []
        for _ in range(steps):
            ascent = torch._foreach_div(grad, global_norm(grad).clamp_min(TINY))
            proposal = torch._foreach_add(delta, ascent, alpha=eta * radius)
            project_(proposal, radius)
            torch._foreach_copy_(theta, origin)
            torch._foreach_add_(theta, proposal)
            new_loss, new_grad = evaluate(True)
            new_loss = float(new_loss)
            if math.isfinite(new_loss) and new_loss > loss:
                rises.append(new_loss - loss)
                delta, loss, grad = proposal, new_loss, new_grad
                eta = min(2.0 * eta, max_step)
            else:
                rises.append(0.0)
                eta *= 0.25
            curve.append(loss)
            if eta < min_step:
                break
        total = loss - base_loss
        last = next((r for r in reversed(rises) if r > 0), 0.0)
        converged = (eta < min_step) or last <= CONVERGED_RISE * max(total, TINY)
        return Ascent(delta, loss, curve, converged)
    finally:
        torch._foreach_copy_(theta, origin)


def worst_case(theta: TensorList, evaluate: Evaluate, radius: float,
               starts: Sequence[Sequence[Tensor]], **ascent) -> WorstCase:
    """The best of :func:`ascend` from each start (each rescaled onto the ball)."""
    with torch.no_grad():
        base = float(evaluate(False)[0])
    runs = [ascend(theta, evaluate, radius, s, base_loss=base, **ascent) for s in starts]
    best = max(range(len(runs)), key=lambda i: runs[i].loss)
    return WorstCase(radius, base, runs[best].loss, runs[best].delta, best, runs)


def random_start(theta: Sequence[Tensor], radius: float,
                 generator: Optional[torch.Generator] = None) -> TensorList:
    """A direction uniform on the sphere of ``radius`` (Gaussian, normalised)."""
    noise = [torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)
             for t in theta]
    return torch._foreach_mul(noise, radius / global_norm(noise).clamp_min(TINY))


@dataclass
class Direction:
    """A unit direction and what the optimizer found on the way (α, φ, probe losses)."""

    vector: TensorList
    alpha: Optional[float] = None
    phi_deg: Optional[float] = None
    at_edge: Optional[bool] = None
    probes: Optional[List[float]] = None


def _optimizer_direction(theta: TensorList, evaluate: Evaluate, g0: Sequence[Tensor], **update
                         ) -> Direction:
    """The descent direction :func:`sharpness_update` forms at θ, as a unit vector."""
    last: Dict[str, TensorList] = {}

    def compute_grad() -> TensorList:
        last["g"] = evaluate(True)[1]
        return last["g"]

    def compute_loss() -> Tensor:
        return evaluate(False)[0]

    backup = [torch.empty_like(t) for t in theta]
    info = sharpness_update(theta, [g.clone() for g in g0], backup,
                            Passes(compute_grad, compute_loss), **update)
    return Direction(unit(last["g"]), alpha=info.alpha,
                     phi_deg=None if info.phi is None else math.degrees(float(info.phi)),
                     at_edge=info.at_edge,
                     probes=None if info.probe_losses is None else info.probe_losses.tolist())


def directions(theta: TensorList, evaluate: Evaluate, *, rho: float, probe_rho: float,
               alpha_other: Optional[float] = None, sam_steps: Sequence[int] = (1, 3),
               alpha_step: float = 0.1, expand_probes: int = 40) -> Dict[str, Direction]:
    """The candidate directions at θ (all unit vectors; θ restored):

    ``sgd`` g_0; ``sam_k<k>`` g_k after k ascent steps of total radius ρ; ``xsam`` d(α*) with α*
    searched over the paper's grid 0..2 at probe radius ρ' in the k = 1 plane; ``xsam_auto`` the
    same with the expanding search; ``xsam_other`` d(α) with ``alpha_other`` (an α searched on
    another batch), when given."""
    _, g0 = evaluate(True)
    g0 = [g.detach().clone() for g in g0]
    out = {"sgd": Direction(unit(g0))}
    for k in sam_steps:
        out[f"sam_k{k}"] = _optimizer_direction(theta, evaluate, g0, rho=rho, ascent_steps=k,
                                                variant="sam", alpha=1.0)
    grid = tuple(alpha_grid(2.0, alpha_step))
    plane = dict(rho=rho, ascent_steps=1, alpha=1.0)
    out["xsam"] = _optimizer_direction(theta, evaluate, g0, variant="xsam",
                                       search=Search(grid, probe_rho), **plane)
    out["xsam_auto"] = _optimizer_direction(
        theta, evaluate, g0, variant="xsam",
        search=Search(grid, probe_rho, Expansion(alpha_step, expand_probes)), **plane)
    if alpha_other is not None:
        plane["alpha"] = alpha_other
        out["xsam_other"] = _optimizer_direction(theta, evaluate, g0, variant="fixed", **plane)
    return out


def score(theta: TensorList, evaluate: Evaluate, worst: WorstCase, direction: Sequence[Tensor]
          ) -> Dict[str, float]:
    """The cosine of a unit ``direction`` to δ*, L(θ + r·d) and the fraction of the worst-case
    rise it reaches (θ restored)."""
    origin = [t.detach().clone() for t in theta]
    try:
        with torch.no_grad():
            loss = float(_moved_loss(theta, origin, list(direction), worst.radius, evaluate))
    finally:
        torch._foreach_copy_(theta, origin)
    cosine = float(dot(direction, worst.delta)
                   / (global_norm(direction).double() * global_norm(worst.delta).double())
                   .clamp_min(TINY))
    rise = worst.rise
    return {"cosine": cosine, "loss": loss,
            "fraction": (loss - worst.base_loss) / rise if rise > 0 else float("nan")}
