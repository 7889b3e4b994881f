r"""Flatness measurements of the paper's Figure 1 and Appendix E.5, as pure functions over lists
of tensors (no fairseq needed; ``xsam-flatness`` and ``xsam-plane`` (:mod:`fairseq_xsam.lab`) drive
them on fairseq checkpoints).

Symbols follow ``ALGORITHM.md``: θ parameters, L(θ) the loss, g_i = ∇L(θ_i), ρ ascent radius,
k ascent steps, ρ' probe radius, u, v, φ, d(α).

- :func:`hvp` — Hessian-vector product by double backward: H·w = ∇_θ ⟨∇_θ L(θ), w⟩.
- :func:`lanczos` — the top Ritz values of a symmetric operator (Lanczos with full
  reorthogonalisation; Ghorbani et al. 2019). With the HVP it gives λ_max = λ_1 ≥ … ≥ λ_5 of the
  Hessian ∇²L(θ) and the paper's ratio λ_max/λ_5 (App. E.5, Table 16).
- :func:`filter_normalized_direction` — a random direction d scaled per filter
  (Li et al. 2018): d_{i,j} ← d_{i,j}·‖θ_{i,j}‖/‖d_{i,j}‖ for filter j of tensor i.
- :func:`average_sharpness` — (1/M)·Σ_m [L(θ + σ·d_m) − L(θ)] over M such directions
  (App. E.5 "Average sharpness", Foret et al. 2020's sharpness averaged over directions).
- :func:`plane_surface` — Figure 1: the loss over θ + a·e_1 + b·e_2 where (e_1, e_2) is an
  orthonormal basis of XSAM's plane span(u, v), with g_0, g_k, d(α*) and θ_k in plane coordinates.
  The ascent, the plane, d(α) and the α choice reuse :mod:`fairseq_xsam.core`, i.e. exactly the
  optimizer's math.

Every function that moves θ restores it bit for bit (from a copy) before returning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Sequence

import torch
from torch import Tensor

from .core import (
    TINY,
    Passes,
    alpha_grid,
    ascend_,
    global_norm,
    interpolation_coefficients,
    pick_alpha,
    plane_between_,
)

TensorList = List[Tensor]

__all__ = ["flatten", "unflatten", "hvp", "lanczos", "LanczosResult",
           "filter_normalized_direction", "average_sharpness", "SharpnessResult",
           "plane_surface", "PlaneSurface", "symmetric_grid"]


# --------------------------------------------------------------------------- flat vectors
def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """The concatenation of ``tensors`` as one 1-D tensor."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: Tensor, like: Sequence[Tensor]) -> TensorList:
    """Splits a 1-D ``vec`` into views shaped like ``like``."""
    out, i = [], 0
    for t in like:
        n = t.numel()
        out.append(vec[i:i + n].view_as(t))
        i += n
    if i != vec.numel():
        raise ValueError(f"vector has {vec.numel()} elements, the tensors {i}")
    return out


# --------------------------------------------------------------------------- Hessian
def hvp(loss: Tensor, params: Sequence[Tensor], vec: Sequence[Tensor],
        grads: Optional[Sequence[Tensor]] = None) -> TensorList:
    r"""Hessian-vector product H·w with H = ∇²_θ L(θ), by double backward:

        H·w = ∇_θ ⟨∇_θ L(θ), w⟩     (w held constant)

    ``loss`` is L(θ) with its graph; ``params`` the tensors θ (requires_grad); ``vec`` w, shaped
    like ``params``. ``grads`` may pass ∇L already computed with ``create_graph=True`` (then
    several products can share one first backward; the graph is retained). Parameters the loss
    does not depend on (to first or second order) get zeros.
    """
    params = list(params)
    if grads is None:
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    dot = None
    for g, w in zip(grads, vec):
        if g is None or not g.requires_grad:
            continue
        term = (g * w.to(g.dtype)).sum()
        dot = term if dot is None else dot + term
    if dot is None:
        return [torch.zeros_like(p) for p in params]
    hv = torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, hv)]


@dataclass
class LanczosResult:
    """Top Ritz values (descending) of a symmetric operator and their residual bounds.

    ``residuals[i]`` = β_m·|s_{m,i}| = ‖A·y_i − λ_i·y_i‖ for the Ritz pair (λ_i, y_i) (exact
    arithmetic): a small value means λ_i is an eigenvalue to that accuracy.
    """

    eigenvalues: List[float]
    residuals: List[float]
    iterations: int
    ritz_values: List[float] = field(default_factory=list)  # all of them, descending


def lanczos(matvec: Callable[[Tensor], Tensor], dim: int, k: int = 5, iters: int = 30, *,
            dtype: torch.dtype = torch.float32, device=None,
            generator: Optional[torch.Generator] = None) -> LanczosResult:
    r"""The ``k`` largest (algebraic) Ritz values of the symmetric ``dim × dim`` operator
    ``matvec`` after ``iters`` Lanczos steps with full reorthogonalisation.

    Lanczos builds an orthonormal Krylov basis q_1..q_m of span{q_1, A q_1, …, A^{m−1} q_1} with
    A q_j = β_{j−1} q_{j−1} + α_j q_j + β_j q_{j+1}, so that Qᵀ A Q = T = tridiag(β, α, β); the
    eigenvalues of T (Ritz values) approximate the extreme eigenvalues of A, the largest first.
    Each new vector is orthogonalised against all previous ones twice ("twice is enough"), which
    prevents the spurious copies of converged eigenvalues that plain Lanczos produces in finite
    precision. If the Krylov space is exhausted (β_j ≈ 0: an invariant subspace), the iteration
    restarts from a random vector orthogonal to the basis (T gets a zero off-diagonal there), so
    ``iters = dim`` returns the whole spectrum. The basis is stored: memory ``iters × dim``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    iters = min(int(iters), dim)
    if iters < k:
        raise ValueError(f"iters ({iters}) must be >= k ({k}) and <= dim ({dim})")
    Q = torch.zeros(iters, dim, dtype=dtype, device=device)
    alphas = torch.zeros(iters, dtype=torch.float64)
    betas = torch.zeros(iters, dtype=torch.float64)  # betas[j] couples q_j and q_{j+1}

    def random_unit(j):
        q = torch.randn(dim, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
        for _ in range(2):
            if j > 0:
                q = q - Q[:j].T @ (Q[:j] @ q)
        return q / torch.linalg.vector_norm(q)

    scale = 0.0
    Q[0] = random_unit(0)
    m = iters
    for j in range(iters):
        w = matvec(Q[j]).to(dtype)
        a = torch.dot(Q[j], w)
        alphas[j] = float(a)
        w = w - a * Q[j]
        if j > 0:
            w = w - float(betas[j - 1]) * Q[j - 1]
        for _ in range(2):
            w = w - Q[:j + 1].T @ (Q[:j + 1] @ w)
        b = float(torch.linalg.vector_norm(w))
        scale = max(scale, abs(alphas[j].item()), b)
        if j + 1 == iters:
            betas[j] = b
            break
        if b <= 1e3 * torch.finfo(dtype).eps * max(scale, 1e-300):
            betas[j] = 0.0  # invariant subspace: continue in its orthogonal complement
            Q[j + 1] = random_unit(j + 1)
        else:
            betas[j] = b
            Q[j + 1] = w / b
    T = torch.diag(alphas[:m])
    if m > 1:
        off = betas[:m - 1]
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    evals, evecs = torch.linalg.eigh(T)
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order], evecs[:, order]
    res = (float(betas[m - 1]) * evecs[m - 1].abs())
    return LanczosResult(eigenvalues=evals[:k].tolist(), residuals=res[:k].tolist(),
                         iterations=m, ritz_values=evals.tolist())


# --------------------------------------------------------------------------- directions
def filter_normalized_direction(weights: Sequence[Tensor], generator: Optional[torch.Generator]
                                = None, norm: str = "filter", one_d: str = "zero") -> TensorList:
    r"""A random direction d ~ N(0, I), normalised to the scale of the weights θ (Li et al. 2018).

    ``norm="filter"``: for every tensor with ≥ 2 dimensions, each filter j (a slice along dim 0:
    an output unit of a Linear, an output channel of a Conv, one token's embedding row) is
    rescaled so that ‖d_j‖ = ‖θ_j‖:  d_j ← d_j·‖θ_j‖/‖d_j‖.
    1-D tensors (biases, LayerNorm gains) follow ``one_d``: ``"zero"`` sets d = 0 (Li et al.'s
    ``--xignore biasbn``, used for their published plots: biases and normalisation parameters are
    not perturbed), ``"weight"`` sets d = θ (the other branch of their code).
    ``norm="element"``: d ← d ⊙ |θ| element-wise for every tensor (the paper's "element-wise
    perturbation"; ``one_d`` is not used).

    The random numbers are drawn in float64 on the CPU from ``generator``, so a seed gives the
    same directions on every device.
    """
    if norm not in ("filter", "element"):
        raise ValueError(f"norm must be 'filter' or 'element', got {norm!r}")
    if one_d not in ("zero", "weight"):
        raise ValueError(f"one_d must be 'zero' or 'weight', got {one_d!r}")
    out = []
    for w in weights:
        z = torch.randn(w.shape, generator=generator, dtype=torch.float64)
        wf = w.detach().to(device="cpu", dtype=torch.float64)
        if norm == "element":
            d = z * wf.abs()
        elif w.dim() <= 1:
            d = torch.zeros_like(wf) if one_d == "zero" else wf.clone()
        else:
            zf, wr = z.reshape(w.shape[0], -1), wf.reshape(w.shape[0], -1)
            zn = torch.linalg.vector_norm(zf, dim=1, keepdim=True)
            wn = torch.linalg.vector_norm(wr, dim=1, keepdim=True)
            d = (zf * (wn / zn.clamp_min(TINY))).reshape(w.shape)
        out.append(d.to(device=w.device, dtype=w.dtype))
    return out


@dataclass
class SharpnessResult:
    """Average sharpness (1/M)·Σ_m [L(θ + σ·d_m) − L(θ)] and its parts."""

    average: float
    loss: float  # L(θ)
    per_direction: List[float]  # L(θ + σ d_m) − L(θ)
    sigma: float

    @property
    def stderr(self) -> float:
        """Standard error of the mean over directions (0 for one direction)."""
        n = len(self.per_direction)
        if n < 2:
            return 0.0
        mean = sum(self.per_direction) / n
        var = sum((x - mean) ** 2 for x in self.per_direction) / (n - 1)
        return math.sqrt(var / n)


@torch.no_grad()
def average_sharpness(params: Sequence[Tensor], loss_fn: Callable[[], Tensor], sigma: float,
                      directions: Iterable[Sequence[Tensor]]) -> SharpnessResult:
    r"""E_d[L(θ + σ·d) − L(θ)] estimated as (1/M)·Σ_{m=1..M} [L(θ + σ·d_m) − L(θ)].

    ``params`` are the tensors θ that ``loss_fn()`` reads (moved in place, restored bit for bit);
    ``directions`` yields the d_m (e.g. :func:`filter_normalized_direction` draws, which may be
    made lazily from ``params``: θ is in place whenever the next d_m is drawn; any list works,
    such as ± pairs, which cancel the first-order term σ⟨∇L, d⟩ exactly). On a quadratic
    L = ½(θ−θ*)ᵀA(θ−θ*) at θ = θ*: L(θ + σd) − L(θ) = (σ²/2)·dᵀAd.
    """
    theta = [p.data if isinstance(p, torch.nn.Parameter) else p for p in params]
    backup = [t.clone() for t in theta]
    diffs = []
    try:
        loss0 = float(loss_fn())
        for d in directions:  # drawn lazily: θ must be back in place when the next one is
            torch._foreach_add_(theta, list(d), alpha=sigma)
            diffs.append(float(loss_fn()) - loss0)
            torch._foreach_copy_(theta, backup)
    finally:
        torch._foreach_copy_(theta, backup)
    if not diffs:
        raise ValueError("average_sharpness needs at least one direction")
    return SharpnessResult(average=sum(diffs) / len(diffs), loss=loss0, per_direction=diffs,
                           sigma=sigma)


# --------------------------------------------------------------------------- Figure 1
def symmetric_grid(extent: float, n: int) -> List[float]:
    """n points from −extent to extent; for odd n the middle one is exactly 0."""
    if n < 2:
        raise ValueError(f"grid needs >= 2 points, got {n}")
    half = (n - 1) / 2.0
    return [(i - half) * (extent / half) for i in range(n)]


def _dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    dtype = torch.promote_types(xs[0].dtype, torch.float32)
    return sum((x.to(dtype) * y.to(dtype)).sum() for x, y in zip(xs, ys))


@dataclass
class PlaneSurface:
    r"""The loss over XSAM's plane through θ: ``losses[i][j]`` = L(θ + a_j·e_1 + b_i·e_2).

    e_1 = u = (θ_k − θ)/‖θ_k − θ‖ and e_2 = (v − cos φ·u)/sin φ, v = g_k/‖g_k‖, so that
    u = (1, 0), v = (cos φ, sin φ) and d(α) = (cos αφ, sin αφ) in plane coordinates.
    All 2-vectors below are plane coordinates (a, b).
    """

    a: List[float]
    b: List[float]
    losses: List[List[float]]
    loss0: float  # L(θ) (no gradients: the same evaluation as the grid's)
    phi: float  # φ = ∠(u, v), radians
    degenerate: bool  # u ∥ v: e_2 is a random unit vector ⟂ u, d(α) = v for every α
    alpha_star: float
    alpha_grid: List[float]
    probe_losses: List[float]  # L(θ + ρ'·d(α)) over alpha_grid
    probe_dirs: List[List[float]]  # d(α) over alpha_grid: (cos αφ, sin αφ); d(0) = u, d(1) = v
    g0_dir: List[float]  # projection of g_0 on the plane, normalised
    g0_in_plane: float  # ‖projection of g_0‖/‖g_0‖ (1 for k = 1)
    gk_dir: List[float]  # v
    d_star: List[float]  # d(α*)
    ascent_points: List[List[float]]  # θ_1..θ_k projected (θ_k lies in the plane exactly)
    rho: float
    probe_rho: float
    ascent_steps: int
    g0_norm: float
    gk_norm: float

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def plane_surface(params: Sequence[Tensor], compute_grad: Callable[[], Sequence[Tensor]],
                  compute_loss: Callable[[], Tensor], *, rho: float, probe_rho: float,
                  ascent_steps: int = 1, alphas: Optional[Sequence[float]] = None,
                  extent: Optional[float] = None, grid: int = 21, adaptive: bool = False,
                  asam_eta: float = 0.01, generator: Optional[torch.Generator] = None
                  ) -> PlaneSurface:
    r"""The paper's Figure 1 for one loss: XSAM's plane through θ and the loss over it.

    1. g_0 = ∇L(θ); the optimizer's own ascent (:func:`core.ascend_`: θ_{i+1} = θ_i +
       (ρ/k)·g_i/‖g_i‖, ASAM's with ``adaptive``), g_k = ∇L(θ_k).
    2. u, v, φ by :func:`core.plane_between_` (normalised); e_1 = u, e_2 = (v − cos φ·u)/sin φ.
    3. d(α) = [sin((1−α)φ)·u + sin(αφ)·v]/sin φ (:func:`core.interpolation_coefficients`),
       α* = argmax_α L(θ + ρ'·d(α)) (:func:`core.pick_alpha`: ties → smallest α).
    4. losses[i][j] = L(θ + a_j·e_1 + b_i·e_2), a, b = :func:`symmetric_grid` (extent, grid).

    ``compute_grad()`` returns ∇L at the current ``params``; ``compute_loss()`` returns L without
    gradients. ``extent`` defaults to 1.5·ρ'. θ is restored bit for bit.
    """
    alphas = alpha_grid(2.0, 0.1) if alphas is None else alphas
    coords = symmetric_grid(1.5 * probe_rho if extent is None else extent, grid)
    theta = [p.data if isinstance(p, torch.nn.Parameter) else p for p in params]
    backup = [t.clone() for t in theta]
    try:
        g0, points, gk = _ascend(theta, backup, compute_grad, rho=rho, ascent_steps=ascent_steps,
                                 adaptive=adaptive, asam_eta=asam_eta)
        with torch.no_grad():
            work = torch._foreach_sub(theta, backup)  # θ_k − θ
            torch._foreach_copy_(theta, backup)
            e1, e2, v, plane = _plane_axes(work, gk, theta, generator)
            plane_coords = lambda x: [float(_dot(x, e1)), float(_dot(x, e2))]
            g0_proj = plane_coords(g0)
            gk_dir = _unit(plane_coords(v))
            ascent_points = [plane_coords(p) for p in points]
            del points

            def at(ca, cb):
                torch._foreach_copy_(theta, backup)
                if ca != 0.0:
                    torch._foreach_add_(theta, e1, alpha=ca)
                if cb != 0.0:
                    torch._foreach_add_(theta, e2, alpha=cb)
                return float(compute_loss())

            loss0 = at(0.0, 0.0)
            probe_dirs, probes, best = _probe_plane(at, alphas, plane, gk_dir, probe_rho)
            losses = [[at(ca, cb) for ca in coords] for cb in coords]
    finally:
        with torch.no_grad():
            torch._foreach_copy_(theta, backup)
    g0_norm = float(global_norm(g0))
    return PlaneSurface(
        a=coords, b=coords, losses=losses, loss0=loss0, phi=float(plane.phi),
        degenerate=bool(plane.degenerate),
        alpha_star=float(alphas[best]) if best is not None else float("nan"),
        alpha_grid=[float(x) for x in alphas], probe_losses=probes, probe_dirs=probe_dirs,
        g0_dir=_unit(g0_proj), g0_in_plane=math.hypot(*g0_proj) / max(g0_norm, TINY),
        gk_dir=gk_dir, d_star=probe_dirs[best] if best is not None else [float("nan")] * 2,
        ascent_points=ascent_points, rho=rho, probe_rho=probe_rho, ascent_steps=ascent_steps,
        g0_norm=g0_norm, gk_norm=float(plane.grad_norm))


def _ascend(theta, backup, compute_grad, *, rho, ascent_steps, adaptive, asam_eta):
    """g_0, the ascent points θ_1 − θ … θ_k − θ and g_k, by the optimizer's ascent
    (:func:`core.ascend_`) from θ (``backup`` holds a copy); ``theta`` is left at θ_k."""
    def gradient():
        with torch.enable_grad():
            return [g.detach().clone() for g in compute_grad()]

    g0 = gradient()
    points = []

    def record(i, _):
        if i > 0:  # θ is θ_i
            points.append(torch._foreach_sub(theta, backup))

    with torch.no_grad():
        gk = ascend_(theta, [g.clone() for g in g0], backup, Passes(gradient), rho=rho,
                     ascent_steps=ascent_steps, adaptive=adaptive, asam_eta=asam_eta,
                     each_gradient=record)
        points.append(torch._foreach_sub(theta, backup))
    return g0, points, gk


def _plane_axes(work, gk, theta, generator):
    """(e_1, e_2, v, plane): the plane of ``work`` (θ_k − θ, scratch) and g_k, normalised
    (:func:`core.plane_between_`), and an orthonormal basis of it, e_1 = u; where the plane is
    degenerate, e_1 = u, else v, else a random unit vector, and e_2 a random unit vector ⟂ e_1."""
    v = [g.clone() for g in gk]
    plane = plane_between_(work, v, global_norm(gk))
    plane.normalise_()  # work: u − v, v: v
    e1 = torch._foreach_add(work, v)  # u
    degenerate = bool(plane.degenerate)

    def random_unit():
        return [torch.randn(t.shape, generator=generator, dtype=torch.float64)
                .to(device=t.device, dtype=t.dtype) for t in theta]

    if degenerate and float(global_norm(e1)) < 0.5:
        # no ascent displacement (g_0 = 0): the plane's first axis is v (or random)
        e1 = [x.clone() for x in v] if float(plane.grad_norm) > TINY else random_unit()
        torch._foreach_mul_(e1, 1.0 / float(global_norm(e1).clamp_min(TINY)))
    # u ∥ v: any unit vector ⟂ u completes the basis; d(α) = v for every α
    e2 = random_unit() if degenerate else [x.clone() for x in v]
    torch._foreach_add_(e2, e1, alpha=-float(_dot(e2, e1)))
    torch._foreach_mul_(e2, 1.0 / float(global_norm(e2).clamp_min(TINY)))
    return e1, e2, v, plane


def _probe_plane(at, alphas, plane, gk_dir, probe_rho):
    """The α search of the optimizer in plane coordinates: d(α) = c_u·u + c_v·v over ``alphas``
    (u = (1, 0), v = ``gk_dir``), the probe losses ``at(ρ'·d(α))`` and the best index (or None)."""
    c_u, c_v = interpolation_coefficients(torch.tensor(list(alphas), dtype=torch.float64),
                                          plane.phi.double().cpu(), plane.degenerate.cpu())
    probe_dirs = [[a_u + a_v * gk_dir[0], a_v * gk_dir[1]]
                  for a_u, a_v in zip(c_u.tolist(), c_v.tolist())]
    probes = [at(probe_rho * d[0], probe_rho * d[1]) for d in probe_dirs]
    return probe_dirs, probes, pick_alpha(torch.tensor(probes, dtype=torch.float64), alphas)


def _unit(c):
    n = math.hypot(c[0], c[1])
    return [c[0] / n, c[1] / n] if n > 0 else [0.0, 0.0]
