r"""The XSAM algorithm as a handful of tensor functions over lists of tensors.

Everything here follows ``ALGORITHM.md`` (Chen & Zhou, ICLR 2026, Sec. 4 and App. C) with its
symbols: ``theta`` θ, ``rho`` ρ, ``k`` ascent steps, ``probe_rho`` ρ', ``alpha`` α, ``u`` the
displacement direction, ``v`` the direction of the gradient at the last ascent point, ``phi`` φ.

One update (:func:`sharpness_update`):

1. ascent      θ_0 = θ; θ_{i+1} = θ_i + (ρ/k)·g_i/‖g_i‖  (ASAM: (ρ/k)·T²g_i/‖T g_i‖, T = |θ|+η)
2. plane       u = (θ_k − θ)/‖θ_k − θ‖,  v = g_k/‖g_k‖,  φ = ∠(u, v)
3. interpolate d(α) = [sin((1−α)φ)·u + sin(αφ)·v] / sin φ            (unit vector; d(1) = v)
4. search      α* = argmax_α L(θ + ρ'·d(α)) over 0, Δα, …, α_max     (only on search updates)
5. descend     θ restored bit-exactly; gradient ← ‖g_k‖·d(α*)          (the base optimizer steps)

The baselines share steps 1 and 5 and form the descent gradient differently (:data:`VARIANTS`).

The functions work in place on the caller's lists (torch convention: a trailing ``_``), so that an
update needs one parameter-sized buffer (the copy of θ) and, only on search updates, a second one
(the displacement, kept while the probes move θ). Scalars that depend on the data stay 0-dim
tensors: nothing here synchronises with the host except the α search, which must pick an α.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor

TensorList = List[Tensor]

#: A norm below this is treated as zero (the direction is then undefined).
TINY = 1e-30
#: sin φ below this means u ∥ v: the plane is degenerate and d(α) falls back to v (SAM).
DEGENERATE_SIN = 1e-6


@dataclass(frozen=True)
class Variant:
    """How the descent gradient is formed from the gradients g_0..g_k of one ascent.

    ``plane``: XSAM's ‖g_k‖·d(α). Otherwise the descent gradient is ‖g_k‖·c/‖c‖ with
    c = Σ_i w_i g_i over i = ``first``..k, where w_i = 1 (``normalise`` False) or 1/‖g_i‖.
    SAM (first = k, no normalisation) is g_k itself and costs nothing.
    """

    plane: bool
    first: Optional[int] = None  # 0: from g_0, 1: from g_1, None: g_k alone
    normalise: bool = False
    searches: bool = False


VARIANTS = {
    "xsam": Variant(plane=True, searches=True),
    "fixed": Variant(plane=True),  # WSAM-like: XSAM's d(α) with a fixed α
    "sam": Variant(plane=False),  # g_k (multi-step SAM for k > 1)
    "msam": Variant(plane=False, first=1),  # mean of g_1..g_k (Kim et al., 2023)
    "msam+": Variant(plane=False, first=0),  # mean of g_0..g_k
    "lsam": Variant(plane=False, first=1, normalise=True),  # Σ g_i/‖g_i‖, i ≥ 1 (Mordido et al.)
    "lsam+": Variant(plane=False, first=0, normalise=True),
}


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """‖x‖₂ of the concatenation of ``tensors``, accumulated in (at least) fp32, as a 0-dim tensor."""
    if len(tensors) == 0:
        return torch.zeros(())
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    norms = torch._foreach_norm(list(tensors), 2, dtype=dtype)
    return torch.linalg.vector_norm(torch.stack(norms))


def alpha_grid(alpha_max: float, alpha_step: float) -> List[float]:
    """The α grid 0, Δα, 2Δα, …, α_max (inclusive, robust to rounding of α_max/Δα)."""
    n = int(math.floor(alpha_max / alpha_step + 1e-9))
    grid = [round(i * alpha_step, 12) for i in range(n + 1)]
    if alpha_max - grid[-1] > 1e-9 * max(1.0, alpha_max):
        grid.append(alpha_max)
    return grid


def interpolation_coefficients(alpha, phi: Tensor, degenerate: Tensor):
    """(c_u, c_v) with d(α) = c_u·u + c_v·v = [sin((1−α)φ)·u + sin(αφ)·v]/sin φ.

    Where ``degenerate`` (u ∥ v, or u or v undefined) the result is (0, 1): d = v, SAM's direction.
    """
    sin_phi = torch.sin(phi)
    safe = torch.where(degenerate, torch.ones_like(sin_phi), sin_phi)
    c_u = torch.where(degenerate, torch.zeros_like(phi), torch.sin((1.0 - alpha) * phi) / safe)
    c_v = torch.where(degenerate, torch.ones_like(phi), torch.sin(alpha * phi) / safe)
    return c_u, c_v


def ascent_step_(theta: TensorList, grads: TensorList, radius: float,
                 asam_scale: Optional[TensorList] = None) -> Tensor:
    """θ ← θ + ε with ε = radius·g/‖g‖ (ASAM: radius·T²g/‖Tg‖). ``grads`` is overwritten by ε.

    Returns ‖g‖ (ASAM: ‖Tg‖). A zero gradient gives ε = 0, not NaN.
    """
    if asam_scale is not None:
        torch._foreach_mul_(grads, asam_scale)
    norm = global_norm(grads)
    if asam_scale is not None:
        torch._foreach_mul_(grads, asam_scale)
    torch._foreach_mul_(grads, radius / norm.clamp_min(TINY))
    torch._foreach_add_(theta, grads)
    return norm


def plane_(displacement: TensorList, grads: TensorList, grad_norm: Tensor):
    """Builds the (u, v) plane in place: ``displacement`` (θ_k − θ) becomes u − v, ``grads`` (g_k)
    becomes v. Returns (φ, degenerate).

    φ = 2·asin(‖u − v‖/2) is accurate for every angle, including the small ones where
    arccos⟨u, v⟩ loses all digits; keeping u − v (not u) lets :func:`combine_` and the probes
    use u = (u − v) + v without a third buffer.
    """
    disp_norm = global_norm(displacement)
    torch._foreach_mul_(displacement, 1.0 / disp_norm.clamp_min(TINY))
    torch._foreach_mul_(grads, 1.0 / grad_norm.clamp_min(TINY))
    torch._foreach_sub_(displacement, grads)
    chord = global_norm(displacement)
    phi = 2.0 * torch.asin((chord / 2.0).clamp(0.0, 1.0))
    degenerate = (disp_norm <= TINY) | (grad_norm <= TINY) | (torch.sin(phi) < DEGENERATE_SIN)
    return phi, degenerate


def combine_(u_minus_v: TensorList, v: TensorList, scale_u, scale_v) -> None:
    """v ← a·u + b·v, computed as a·(u − v) + (a + b)·v; ``u_minus_v`` is scratch afterwards."""
    torch._foreach_mul_(v, scale_u + scale_v)
    torch._foreach_mul_(u_minus_v, scale_u)
    torch._foreach_add_(v, u_minus_v)


def pick_alpha(losses: Tensor, grid: Sequence[float]):
    """Index of the largest finite probe loss (ties: the smallest α), or None if none is finite."""
    finite = torch.isfinite(losses)
    if not bool(finite.any()):
        return None
    masked = torch.where(finite, losses, torch.full_like(losses, -math.inf))
    best = masked.max()
    return int(torch.nonzero(masked == best)[0, 0])


@dataclass
class UpdateInfo:
    """What one update found (0-dim tensors stay on the device: log them without syncing)."""

    grad_norm: Tensor  # ‖g_k‖
    phi: Optional[Tensor] = None  # angle between u and v (radians), plane variants only
    alpha: Optional[float] = None  # α used for this update's descent
    searched: bool = False  # a search ran (its α is a candidate until the update commits)
    probe_losses: Optional[Tensor] = None


def sharpness_update(
    theta: TensorList,
    grads: TensorList,
    backup: TensorList,
    *,
    rho: float,
    ascent_steps: int,
    variant: str,
    alpha: float,
    search_grid: Optional[Sequence[float]] = None,
    probe_rho: float = 0.0,
    adaptive: bool = False,
    asam_eta: float = 0.01,
    compute_grad: Callable[[], TensorList],
    compute_loss: Optional[Callable[[], Tensor]] = None,
    moved: Callable[[], None] = lambda: None,
    skip_search: Callable[[Tensor], bool] = bool,
) -> UpdateInfo:
    """One XSAM-family update, from g_0 to the descent gradient.

    On entry ``theta`` holds θ and ``grads`` holds g_0 = ∇L(θ). On return ``theta`` holds θ again,
    bit for bit, and the list returned by the last ``compute_grad`` holds the descent gradient
    (for ``sam`` it is g_k untouched). ``backup`` is a caller-owned buffer shaped like ``theta``.

    ``compute_grad()`` evaluates ∇L at the current ``theta`` and returns the gradient list (it may
    be ``grads`` again); ``compute_loss()`` evaluates L at the current ``theta`` without gradients
    (the probes); ``moved()`` is called whenever ``theta`` changed, so a caller whose model reads a
    copy of θ (fp16) can refresh it. A search runs iff ``search_grid`` is given, unless
    ``skip_search(degenerate)`` says the plane is degenerate (α is then kept): callers whose
    workers each build their own plane pass a function that agrees across workers, so that all
    of them run the same probes (a degenerate worker probes along v).
    """
    spec = VARIANTS[variant]
    torch._foreach_copy_(backup, theta)
    try:
        asam_scale = None
        if adaptive:
            asam_scale = torch._foreach_abs(backup)
            torch._foreach_add_(asam_scale, asam_eta)
        acc = None
        count = 0
        radius = rho / ascent_steps
        for i in range(ascent_steps):
            if i > 0:
                grads = compute_grad()
            if spec.first is not None and i >= spec.first:
                acc, count = _accumulate(acc, count, grads, spec.normalise)
            ascent_step_(theta, grads, radius, asam_scale)
            moved()
        del asam_scale
        grads = compute_grad()
        grad_norm = global_norm(grads)
        info = UpdateInfo(grad_norm=grad_norm)
        if spec.plane:
            _plane_descent(theta, grads, backup, grad_norm, alpha, search_grid, probe_rho,
                           compute_loss, moved, skip_search, info)
        elif spec.first is not None:
            acc, count = _accumulate(acc, count, grads, spec.normalise)
            scale = grad_norm / global_norm(acc).clamp_min(TINY)
            torch._foreach_mul_(acc, scale)
            torch._foreach_copy_(grads, acc)
    finally:
        torch._foreach_copy_(theta, backup)
        moved()
    return info


def _accumulate(acc, count, grads, normalise):
    if normalise:
        term = torch._foreach_mul(grads, 1.0 / global_norm(grads).clamp_min(TINY))
    else:
        term = grads
    if acc is None:
        acc = torch._foreach_mul(grads, 1.0) if term is grads else term  # a copy: grads get reused
    else:
        torch._foreach_add_(acc, term)
    return acc, count + 1


def _plane_descent(theta, grads, backup, grad_norm, alpha, search_grid, probe_rho,
                   compute_loss, moved, skip_search, info):
    searching = search_grid is not None
    if searching:
        # The probes move θ, so the displacement θ_k − θ needs its own buffer this time.
        work = torch._foreach_sub(theta, backup)
    else:
        torch._foreach_sub_(theta, backup)
        work = theta
    phi, degenerate = plane_(work, grads, grad_norm)
    info.phi = phi
    if searching and not skip_search(degenerate):
        # A search decides α on the host anyway: one transfer for all the grid's coefficients.
        c_u, c_v = interpolation_coefficients(
            torch.tensor(list(search_grid), dtype=phi.dtype, device=phi.device), phi, degenerate)
        losses = []
        for a_u, a_v in zip(c_u.tolist(), c_v.tolist()):
            # θ + ρ'·d(α) = θ + ρ'c_u·(u − v) + ρ'(c_u + c_v)·v
            torch._foreach_copy_(theta, backup)
            torch._foreach_add_(theta, work, alpha=probe_rho * a_u)
            torch._foreach_add_(theta, grads, alpha=probe_rho * (a_u + a_v))
            moved()
            loss = compute_loss().detach().reshape(())
            losses.append(loss.to(torch.promote_types(loss.dtype, torch.float32)))
        info.probe_losses = torch.stack(losses)
        best = pick_alpha(info.probe_losses, search_grid)
        info.searched = True
        if best is not None:
            alpha = float(search_grid[best])
    info.alpha = alpha
    c_u, c_v = interpolation_coefficients(alpha, phi, degenerate)
    combine_(work, grads, grad_norm * c_u, grad_norm * c_v)
