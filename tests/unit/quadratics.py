"""A quadratic whose XSAM ascent plane and probe-circle maximum are known in closed form, shared
by test_core.py (the functional core) and test_optim.py (the XSAM class)."""

import math

import torch


def plane_quadratic(p, a, c, rho, extra=(0.5, 2.0, 1.0, 3.0)):
    r"""L(θ) = ½θᵀAθ + bᵀθ in 2 + len(extra) dimensions whose ascent plane is known exactly.

    A = [[a, c], [c, a]] ⊕ diag(extra) and b is chosen so that g_0 = ∇L(θ_0) = p·e_0. With k = 1:
    u = e_0, g_1 = g_0 + ρA e_0 = (p + ρa)·e_0 + ρc·e_1, so the plane is span(e_0, e_1), the unit
    vector ⟂ u towards v is w = e_1 (c > 0) and φ = atan2(ρc, p + ρa). On the probe circle
    θ_0 + ρ'(cos ψ·e_0 + sin ψ·e_1) (ψ = αφ):

        L(ψ) = L(θ_0) + ρ'p cos ψ + ½ρ'²(a + c sin 2ψ)

    and dL/dψ = −ρ'p sin ψ + ρ'²c cos 2ψ = 0 with cos 2ψ = 1 − 2 sin²ψ is a quadratic in sin ψ:
    2ρ'c s² + p s − ρ'c = 0. Its root in (0, 1/√2], s* = (−p + √(p² + 8ρ'²c²))/(4ρ'c), is the
    maximum over the whole circle (the other stationary points have cos ψ < 0 or sin 2ψ < 0, so a
    lower L than ψ* ≥ ψ = 0). Hence α* = asin(s*)/φ in closed form.
    """
    n = 2 + len(extra)
    A = torch.zeros(n, n, dtype=torch.float64)
    A[:2, :2] = torch.tensor([[a, c], [c, a]], dtype=torch.float64)
    A[2:, 2:] = torch.diag(torch.tensor(extra, dtype=torch.float64))
    theta0 = torch.linspace(-0.7, 0.9, n, dtype=torch.float64)
    g0 = torch.zeros(n, dtype=torch.float64)
    g0[0] = p
    b = g0 - A @ theta0
    phi = math.atan2(rho * c, p + rho * a)
    return A, b, theta0, phi


def closed_form_alpha(p, c, probe_rho, phi):
    s = (-p + math.sqrt(p * p + 8 * probe_rho ** 2 * c * c)) / (4 * probe_rho * c)
    return math.asin(s) / phi
