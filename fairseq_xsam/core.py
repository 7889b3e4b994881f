r"""The XSAM algorithm as a handful of tensor functions over lists of tensors.

Everything here follows ``ALGORITHM.md`` (Chen & Zhou, ICLR 2026, Sec. 4 and App. C) with its
symbols: ``theta`` θ, ``rho`` ρ, ``k`` ascent steps, ``probe_rho`` ρ', ``alpha`` α, ``u`` the
displacement direction, ``v`` the direction of the gradient at the last ascent point, ``phi`` φ.

One update (:func:`sharpness_update`, settings :class:`Search`, model passes :class:`Passes`):

1. ascent      θ_0 = θ; θ_{i+1} = θ_i + (ρ/k)·g_i/‖g_i‖  (ASAM: (ρ/k)·T²g_i/‖T g_i‖, T = |θ|+η)
2. plane       u = (θ_k − θ)/‖θ_k − θ‖,  v = g_k/‖g_k‖,  φ = ∠(u, v)
3. interpolate d(α) = [sin((1−α)φ)·u + sin(αφ)·v] / sin φ            (unit vector; d(1) = v)
4. search      α* = argmax_α L(θ + ρ'·d(α)) over 0, Δα, …, α_max     (only on search updates)
               α_max = 'auto' (:class:`Expansion`): past α_max = 2 keep probing α_max + jΔα while
               the loss rises, α·φ ≤ π, at most N extra probes; :func:`edge_of` says whether α*
               is the last probe (the maximum may lie beyond what was searched)
5. descend     θ restored bit-exactly; gradient ← ‖g_k‖·d(α*)          (the base optimizer steps)

The baselines share steps 1 and 5 and form the descent gradient differently (:data:`VARIANTS`).

The functions work in place on the caller's lists (torch convention: a trailing ``_``), so that an
update needs one parameter-sized buffer (the copy of θ) and, only on search updates, a second one
(the displacement, kept while the probes move θ). Scalars that depend on the data stay 0-dim
tensors: nothing here synchronises with the host except the α search, which must pick an α.

Where the passes are short the update's cost is its sweeps over the parameters, so they are kept
few (docs/performance.md counts them per update kind): u and v are never normalised in memory,
the plane is held as x = ‖θ_k − θ‖·(u − v) and g_k with the 1/‖·‖ factors folded into the scalars
(:class:`Plane`, built by :func:`plane_between_`), the two norms that do not depend on each other
come from one ``_foreach_norm``, y + s·x is one sweep where a broadcast 0-dim scale allows it (:func:`one_sweep_axpy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor

from .search_plan import (  # noqa: F401  (core's names: the math reads them from here)
    AUTO,
    AUTO_BASE_ALPHA_MAX,
    EDGE_GRID,
    EDGE_OPPOSITE,
    EDGE_PROBES,
    Expansion,
    Search,
    alpha_grid,
    edge_of,
    largest_alpha,
    pick_alpha,
    search_plan,
    within_half_turn,
)

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


def global_norms(first: Sequence[Tensor], second: Sequence[Tensor]):
    """(‖first‖, ‖second‖) as :func:`global_norm` gives them, from one ``_foreach_norm`` over both
    lists (one sweep over each, one launch) and one small reduction."""
    tensors = list(first) + list(second)
    if len(first) == 0 or len(first) != len(second):
        return global_norm(first), global_norm(second)
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    norms = torch.stack(torch._foreach_norm(tensors, 2, dtype=dtype)).view(2, len(first))
    return torch.linalg.vector_norm(norms, dim=1).unbind()


def one_sweep_axpy(tensors: Sequence[Tensor]) -> bool:
    """Whether y ← y + s·x with a 0-dim tensor s (:func:`add_scaled_`) is one sweep over these
    tensors. On the CPU every foreach op is a loop over the tensors anyway, so a broadcast scale
    costs nothing, and one flat tensor (fairseq's --fp16 master) is one kernel anywhere; for many
    CUDA tensors a broadcast scale would leave the multi-tensor fast path (a kernel per tensor),
    so there the scale is applied in place first (one more sweep, same launches as before).
    fp16 tensors take that form too: ``addcmul`` casts the scale to the tensors' dtype, and the
    scales here (ρ/‖g‖, ‖θ_k − θ‖/‖g_k‖) can pass fp16's 65,504 where scale × tensor does not."""
    if tensors and tensors[0].dtype == torch.float16:
        return False
    return len(tensors) <= 1 or tensors[0].device.type == "cpu"


def add_scaled_(target: TensorList, tensors: TensorList, scale: Tensor, sign: float = 1.0) -> None:
    """target ← target + sign·scale·tensors for a 0-dim tensor ``scale``, in one sweep, without a
    host sync and without touching ``tensors`` (see :func:`one_sweep_axpy`)."""
    torch._foreach_addcmul_(target, tensors, [scale] * len(tensors), value=sign)


def _nothing() -> None:
    return None


def _identity(value: Tensor) -> Tensor:
    return value


@dataclass(frozen=True)
class Passes:
    """The passes an update makes over the model, and how workers agree; the defaults are one
    process's (nothing to refresh, nothing to agree on).

    ``compute_grad()`` evaluates ∇L at the current θ and returns the gradient list (it may be the
    caller's ``grads`` again); ``compute_loss()`` evaluates L at the current θ without gradients
    (the probes; needed only to search). ``moved()`` is called whenever θ changed, so a caller
    whose model reads a copy of θ (fp16) can refresh it. ``skip_search(degenerate)`` says whether
    a due search is skipped because the plane is degenerate (α is then kept): callers whose
    workers each build their own plane pass a function that agrees across workers, so that all
    of them run the same probes (a degenerate worker probes along v). ``max_over_workers(t)`` is
    the largest ``t`` over the workers (the π cap of the expanding search, φ = 0 where
    degenerate), so workers with their own planes all probe the same α's.
    """

    compute_grad: Callable[[], TensorList]
    compute_loss: Optional[Callable[[], Tensor]] = None
    moved: Callable[[], None] = _nothing
    skip_search: Callable[[Tensor], bool] = bool
    max_over_workers: Callable[[Tensor], Tensor] = _identity


def interpolation_coefficients(alpha, phi: Tensor, degenerate: Tensor):
    """(c_u, c_v) with d(α) = c_u·u + c_v·v = [sin((1−α)φ)·u + sin(αφ)·v]/sin φ.

    Where ``degenerate`` (u ∥ v, or u or v undefined) the result is (0, 1): d = v, SAM's direction.
    """
    # the three sines in one op (a 1-D α gives rows of candidates)
    sines = torch.sin(torch.stack(torch.broadcast_tensors(phi, (1.0 - alpha) * phi, alpha * phi)))
    ratios = sines[1:] / torch.where(degenerate, 1.0, sines[0])
    return torch.where(degenerate, 0.0, ratios[0]), torch.where(degenerate, 1.0, ratios[1])


def ascent_step_(theta: TensorList, grads: TensorList, radius: float,
                 asam_scale: Optional[TensorList] = None,
                 origin: Optional[TensorList] = None) -> Tensor:
    """θ ← θ + ε with ε = radius·g/‖g‖ (ASAM: radius·T²g/‖Tg‖). ``grads`` is scratch afterwards.

    Returns ‖g‖ (ASAM: ‖Tg‖). A zero gradient gives ε = 0, not NaN. With ``origin`` the step is
    taken from ``origin`` (θ ← origin + ε): ``theta`` may then hold scratch, e.g. T itself.
    """
    if asam_scale is not None:
        torch._foreach_mul_(grads, asam_scale)
    norm = global_norm(grads)
    if asam_scale is not None:
        torch._foreach_mul_(grads, asam_scale)
    if origin is not None:
        torch._foreach_copy_(theta, origin)
    step = radius / norm.clamp_min(TINY)
    if one_sweep_axpy(grads):
        add_scaled_(theta, grads, step)
    else:
        torch._foreach_mul_(grads, step)
        torch._foreach_add_(theta, grads)
    return norm


@dataclass
class Plane:
    """The (u, v) plane of one update: two lists x = p·(u − v) and g = q·v, and 0-dim tensors.

    :func:`plane_between_` builds it without normalisation sweeps (p, q are norms), the form the
    update descends and probes with; :meth:`normalise_` makes the lists u − v and v (p = q = 1),
    the unit vectors a caller that reads the plane's directions needs. φ = 2·asin(‖u − v‖/2) is
    accurate at small angles, where arccos⟨u, v⟩ loses all digits, and at every angle up to a few
    tenths of a degree from π (u and v almost opposite; in fp32 φ is then only good to a few per
    cent of π − φ, and within ~0.1° the plane may be taken as degenerate: d = v); keeping u − v
    (not u) lets the descent and the probes use u = (u − v) + v without a third buffer.
    """

    x: TensorList
    g: TensorList
    p: Tensor
    q: Tensor
    grad_norm: Tensor  # ‖g_k‖
    phi: Tensor
    degenerate: Tensor  # u ∥ v, or u or v undefined: d(α) = v

    def normalise_(self) -> None:
        """x ← u − v, g ← v (two sweeps): unit vectors, for a caller that reads the plane's
        directions (the update itself never needs them)."""
        torch._foreach_mul_(self.x, 1.0 / self.p.clamp_min(TINY))
        torch._foreach_mul_(self.g, 1.0 / self.q.clamp_min(TINY))
        self.p = self.q = torch.ones_like(self.p)

    def scales(self, alpha, radius):
        """(a, b) with radius·d(α) = a·x + b·g, from d(α) = c_u·(u − v) + (c_u + c_v)·v; 0-dim
        tensors, or 1-D for a 1-D tensor of α's."""
        c_u, c_v = interpolation_coefficients(alpha, self.phi, self.degenerate)
        return radius * c_u / self.p.clamp_min(TINY), radius * (c_u + c_v) / self.q.clamp_min(TINY)

    def descend_(self, alpha) -> None:
        """g ← ‖g_k‖·d(α) = a·x + b·g (two sweeps; three for many CUDA tensors); x is scratch."""
        a, b = self.scales(alpha, self.grad_norm)
        torch._foreach_mul_(self.g, b)
        if one_sweep_axpy(self.g):
            add_scaled_(self.g, self.x, a)
        else:
            torch._foreach_mul_(self.x, a)
            torch._foreach_add_(self.g, self.x)


def plane_between_(displacement: TensorList, grads: TensorList,
                   grad_norm: Optional[Tensor] = None) -> Plane:
    """The (u, v) plane of ``displacement`` (θ_k − θ) and ``grads`` (g_k, left as it is), formed
    in place of ``displacement`` and not normalised (call :meth:`Plane.normalise_` for u − v and
    v): one reduction sweep over both, x = θ_k − θ − (‖θ_k − θ‖/‖g_k‖)·g_k = ‖θ_k − θ‖·(u − v)
    (one sweep; two for many CUDA tensors), one reduction sweep for ‖u − v‖."""
    if grad_norm is None:
        disp_norm, grad_norm = global_norms(displacement, grads)
    else:
        disp_norm = global_norm(displacement)
    if one_sweep_axpy(grads):
        add_scaled_(displacement, grads, disp_norm / grad_norm.clamp_min(TINY), sign=-1.0)
        p = disp_norm
    else:  # scaling g instead would lose it when θ_k = θ
        torch._foreach_mul_(displacement, grad_norm / disp_norm.clamp_min(TINY))
        torch._foreach_sub_(displacement, grads)
        p = grad_norm
    chord = global_norm(displacement) / p.clamp_min(TINY)
    phi = 2.0 * torch.asin((0.5 * chord).clamp(0.0, 1.0))
    degenerate = ((torch.minimum(disp_norm, grad_norm) <= TINY)
                  | (torch.sin(phi) < DEGENERATE_SIN))
    return Plane(displacement, grads, p, grad_norm, grad_norm, phi, degenerate)


@dataclass
class UpdateInfo:
    """What one update found (0-dim tensors stay on the device: log them without syncing)."""

    grad_norm: Tensor  # ‖g_k‖
    phi: Optional[Tensor] = None  # angle between u and v (radians), plane variants only
    alpha: Optional[float] = None  # α used for this update's descent
    searched: bool = False  # a search ran (its α is a candidate until the update commits)
    probe_losses: Optional[Tensor] = None  # in the order of probe_alphas
    probe_alphas: Optional[List[float]] = None  # 0, Δα, …, α_max[, past it with 'auto']
    at_edge: Optional[bool] = None  # search updates: α* is the last probe (see edge_of)
    edge: Optional[str] = None  # why: EDGE_GRID, EDGE_PROBES or EDGE_OPPOSITE; None if inside


def sharpness_update(
    theta: TensorList,
    grads: TensorList,
    backup: TensorList,
    passes: Passes,
    *,
    rho: float,
    ascent_steps: int,
    variant: str,
    alpha: float,
    search: Optional[Search] = None,
    adaptive: bool = False,
    asam_eta: float = 0.01,
) -> UpdateInfo:
    """One XSAM-family update, from g_0 to the descent gradient.

    On entry ``theta`` holds θ and ``grads`` holds g_0 = ∇L(θ). On return ``theta`` holds θ again,
    bit for bit, and the list returned by the last ``passes.compute_grad`` holds the descent
    gradient (for ``sam`` it is g_k untouched). ``backup`` is a caller-owned buffer shaped like
    ``theta``. The model is reached only through ``passes`` (:class:`Passes`).

    A search runs iff ``search`` is given (:class:`Search`; see :func:`search_alpha_`), unless
    ``passes.skip_search(degenerate)`` says the plane is degenerate (α is then kept).
    """
    spec = VARIANTS[variant]
    torch._foreach_copy_(backup, theta)
    try:
        acc = None

        def accumulate(i, g):
            nonlocal acc
            if spec.first is not None and i >= spec.first:
                acc = _accumulate(acc, g, spec.normalise)

        grads = ascend_(theta, grads, backup, passes, rho=rho, ascent_steps=ascent_steps,
                        adaptive=adaptive, asam_eta=asam_eta, each_gradient=accumulate)
        if spec.plane:
            info = _plane_descent(theta, grads, backup, alpha, search, passes)
        else:
            info = UpdateInfo(grad_norm=global_norm(grads))
            if acc is not None:  # Σ over more than g_k alone (for g_k alone: g_k itself)
                acc = _accumulate(acc, grads, spec.normalise)
                torch._foreach_mul_(acc, info.grad_norm / global_norm(acc).clamp_min(TINY))
                torch._foreach_copy_(grads, acc)
    finally:
        torch._foreach_copy_(theta, backup)
        passes.moved()
    return info


def ascend_(theta: TensorList, grads: TensorList, backup: TensorList, passes: Passes, *,
            rho: float, ascent_steps: int, adaptive: bool = False, asam_eta: float = 0.01,
            each_gradient: Optional[Callable[[int, TensorList], None]] = None) -> TensorList:
    """The ascent θ_0 = θ → θ_k (:func:`ascent_step_`, radius ρ/k per step) and g_k.

    ``theta`` holds θ and ``backup`` a copy of it; ``grads`` holds g_0 and is scratch afterwards.
    Each g_i (i < k) is handed to ``each_gradient(i, g_i)`` before its step uses it up (θ is then
    θ_i). Returns ``passes.compute_grad()`` at θ_k, the last point; ``theta`` is left there.
    """
    asam_scale = None
    if adaptive:
        # T = |θ| + η. With one ascent step it lives in θ's own buffer until the step is taken
        # from the backup (no allocation); with more, T serves every step: a buffer.
        asam_scale = theta if ascent_steps == 1 else torch._foreach_abs(backup)
        if ascent_steps == 1:
            torch._foreach_abs_(theta)
        torch._foreach_add_(asam_scale, asam_eta)
    radius = rho / ascent_steps
    for i in range(ascent_steps):
        if i > 0:
            grads = passes.compute_grad()
        if each_gradient is not None:
            each_gradient(i, grads)
        ascent_step_(theta, grads, radius, asam_scale,
                     origin=backup if asam_scale is theta else None)
        passes.moved()
    del asam_scale
    return passes.compute_grad()


def _accumulate(acc, grads, normalise):
    """acc + g (or g/‖g‖); a new list for the first term (``grads`` is reused by the passes)."""
    if normalise:
        scale = 1.0 / global_norm(grads).clamp_min(TINY)
        if acc is None:
            return torch._foreach_mul(grads, scale)
        if one_sweep_axpy(grads):
            add_scaled_(acc, grads, scale)
        else:
            torch._foreach_add_(acc, torch._foreach_mul(grads, scale))
    elif acc is None:
        return torch._foreach_mul(grads, 1.0)  # a copy
    else:
        torch._foreach_add_(acc, grads)
    return acc


def _plane_descent(theta, grads, backup, alpha, search: Optional[Search],
                   passes: Passes) -> UpdateInfo:
    if search is not None:
        # The probes move θ, so the displacement θ_k − θ needs its own buffer this time.
        work = torch._foreach_sub(theta, backup)
    else:
        torch._foreach_sub_(theta, backup)
        work = theta
    plane = plane_between_(work, grads)
    info = UpdateInfo(grad_norm=plane.grad_norm, phi=plane.phi, alpha=alpha)
    if search is not None and not passes.skip_search(plane.degenerate):
        search_alpha_(theta, backup, plane, search, passes, info)
        if info.alpha is None:  # no finite probe: α is kept
            info.alpha = alpha
    plane.descend_(info.alpha)
    return info


def search_alpha_(theta, backup, plane: Plane, search: Search, passes: Passes,
                  info: Optional[UpdateInfo] = None) -> UpdateInfo:
    """α* = argmax_α L(θ + ρ'·d(α)) over ``search.grid`` (ties: the smallest α), then, with
    ``search.expansion``, on past the grid's edge (the π cap from ``passes.max_over_workers``).

    The expansion starts only if α* is the grid's last point, and probes α_e + Δα, α_e + 2Δα, …
    while each new loss is above every earlier one (strictly: a tie keeps the smaller α; a
    non-finite loss stops it), α·φ ≤ π, and at most ``expansion.probes`` times. So when the
    maximum is inside the grid the result is the fixed grid's, probe for probe. Probes move
    ``theta`` from ``backup`` (θ) within the ``plane``; ``theta`` is left at the last probe.
    Fills ``info``: probe_alphas, probe_losses, alpha (None if no probe was finite), searched,
    at_edge and edge (:func:`edge_of`).
    """
    info = info if info is not None else UpdateInfo(grad_norm=torch.zeros(()))
    expansion, compute_loss, moved = search.expansion, passes.compute_loss, passes.moved
    alphas = [float(a) for a in search.grid]
    extra = expansion.alphas(alphas[-1]) if expansion is not None else []
    phi, degenerate = plane.phi, plane.degenerate
    candidates = torch.tensor(alphas + extra, dtype=phi.dtype, device=phi.device)
    scale_x, scale_g = plane.scales(candidates, search.probe_rho)  # θ + ρ'·d(α) = θ + a·x + b·g
    within = torch.ones_like(candidates)
    if expansion is not None:
        # A worker with a degenerate plane probes along v for every α: its φ does not bound α.
        cap_phi = passes.max_over_workers(torch.where(degenerate, torch.zeros_like(phi), phi))
        within = within_half_turn(candidates, cap_phi).to(phi.dtype)
    # One transfer for every coefficient and flag: the search decides on the host anyway.
    coefficients = torch.stack([scale_x, scale_g, within]).tolist()

    def probe(i):
        torch._foreach_copy_(theta, backup)
        torch._foreach_add_(theta, plane.x, alpha=coefficients[0][i])
        torch._foreach_add_(theta, plane.g, alpha=coefficients[1][i])
        moved()
        loss = compute_loss().detach().reshape(())
        return loss.to(torch.promote_types(loss.dtype, torch.float32))

    losses = [probe(i) for i in range(len(alphas))]
    best = pick_alpha(torch.stack(losses), alphas)
    n = len(alphas)
    if expansion is not None and best == n - 1:
        for j in range(expansion.probes):
            if not coefficients[2][n + j]:
                break
            losses.append(probe(n + j))
            alphas.append(extra[j])
            rose = torch.isfinite(losses[-1]) & (losses[-1] > losses[best])
            if not bool(rose):  # fell, tied or non-finite (as pick_alpha): α* is inside
                break
            best = len(losses) - 1
    next_within = len(alphas) < len(extra) + n and bool(coefficients[2][len(alphas)])
    info.edge = edge_of(best, len(losses), expansion, next_within)
    info.at_edge = info.edge is not None
    info.probe_alphas = alphas
    info.probe_losses = torch.stack(losses)
    info.searched = True
    info.alpha = float(alphas[best]) if best is not None else None
    return info
