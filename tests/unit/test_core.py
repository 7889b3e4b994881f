"""The core's tensor functions against closed forms and a float64 reference written differently."""

import math

import pytest
import torch
from quadratics import closed_form_alpha, plane_quadratic

from fairseq_xsam import core


def split(vec, shapes=((3,), (2, 2), (0,), (1,))):
    """A flat vector as a list of tensors of several shapes (a zero-size one included)."""
    out, i = [], 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(vec[i:i + n].reshape(shape).clone())
        i += n
    return out


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def slerp_reference(u, v, alpha):
    """d(α) written from the definition: rotate u towards v by αφ in the plane of u and v."""
    u, v = u / u.norm(), v / v.norm()
    phi = torch.arccos(torch.clamp(u @ v, -1, 1))
    w = v - (u @ v) * u  # the unit vector orthogonal to u in the plane, towards v
    w = w / w.norm()
    return math.cos(alpha * phi) * u + math.sin(alpha * phi) * w


def test_global_norm_matches_flat_norm_and_handles_empty():
    vec = torch.randn(8, dtype=torch.float64)
    assert torch.allclose(core.global_norm(split(vec)), vec.norm())
    assert float(core.global_norm([])) == 0.0
    half = [t.half() for t in split(torch.full((8,), 300.0))]  # fp16 squares overflow: fp32 sums
    assert math.isclose(float(core.global_norm(half)), 300.0 * math.sqrt(8), rel_tol=1e-3)


@pytest.mark.parametrize("alpha_max,step,expected", [
    (2.0, 0.1, 21), (1.0, 0.25, 5), (2.0, 0.3, 8), (0.5, 0.5, 2)])
def test_alpha_grid_is_inclusive(alpha_max, step, expected):
    grid = core.alpha_grid(alpha_max, step)
    assert len(grid) == expected and grid[0] == 0.0 and math.isclose(grid[-1], alpha_max)
    assert all(b > a for a, b in zip(grid, grid[1:]))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0, 1.7, 2.0])
def test_interpolation_is_unit_and_matches_rotation(alpha):
    torch.manual_seed(0)
    u, v = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    un, vn = u / u.norm(), v / v.norm()
    phi = torch.arccos(un @ vn)
    c_u, c_v = core.interpolation_coefficients(alpha, phi, torch.tensor(False))
    d = c_u * un + c_v * vn
    assert math.isclose(float(d.norm()), 1.0, rel_tol=1e-12)
    assert torch.allclose(d, slerp_reference(u, v, alpha), atol=1e-12)
    if alpha == 0.0:
        assert torch.allclose(d, un)
    if alpha == 1.0:
        assert torch.allclose(d, vn)


def test_degenerate_plane_falls_back_to_v():
    c_u, c_v = core.interpolation_coefficients(0.5, torch.tensor(0.0), torch.tensor(True))
    assert float(c_u) == 0.0 and float(c_v) == 1.0


def unit_plane(displacement, grads):
    """The plane built in place and normalised: displacement ← u − v, grads ← v; (φ, degenerate)."""
    plane = core.plane_between_(displacement, grads, core.global_norm(grads))
    plane.normalise_()
    return plane.phi, plane.degenerate


@pytest.mark.parametrize("angle", [1e-4, 0.01, 0.5, 1.5, 3.0])
def test_plane_angle_is_accurate_at_every_angle(angle):
    # u along e1, g_k at the given angle; the plane is built in float32 and must still resolve φ
    disp = split(torch.tensor([2.0, 0, 0, 0, 0, 0, 0, 0]))
    g = split(torch.tensor([math.cos(angle), math.sin(angle), 0, 0, 0, 0, 0, 0]) * 5.0)
    phi, degenerate = unit_plane(disp, g)
    assert math.isclose(float(phi), angle, rel_tol=2e-3)
    assert not bool(degenerate)
    # u − v and v are left in place
    assert torch.allclose(flat(g), torch.tensor([math.cos(angle), math.sin(angle), 0, 0, 0, 0, 0, 0]))


def test_plane_flags_parallel_and_zero_vectors():
    e1 = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    for disp, g in ((e1, 3 * e1), (e1, -3 * e1), (0 * e1, e1), (e1, 0 * e1)):
        gl = split(g.clone())
        phi, degenerate = unit_plane(split(disp.clone()), gl)
        assert bool(degenerate), (disp, g)
        assert torch.isfinite(phi) and all(torch.isfinite(t).all() for t in gl)


def test_ascent_step_moves_by_radius_along_gradient():
    theta = split(torch.zeros(8, dtype=torch.float64))
    g = torch.arange(8, dtype=torch.float64)
    grads = split(g.clone())
    norm = core.ascent_step_(theta, grads, 0.3)
    assert math.isclose(float(norm), float(g.norm()))
    assert torch.allclose(flat(theta), 0.3 * g / g.norm())


def test_asam_ascent_matches_closed_form():
    w = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    g = torch.tensor([0.2, 0.1, -0.4, 1.0, 0.3, 0.0, 0.5, 0.5], dtype=torch.float64)
    eta = 0.01
    theta = split(w.clone())
    scale = split(w.abs() + eta)
    core.ascent_step_(theta, split(g.clone()), 0.5, scale)
    t = w.abs() + eta
    assert torch.allclose(flat(theta), w + 0.5 * t * t * g / (t * g).norm())


def test_zero_gradient_gives_no_step_and_no_nan():
    theta = split(torch.ones(8))
    core.ascent_step_(theta, split(torch.zeros(8)), 0.3)
    assert torch.equal(flat(theta), torch.ones(8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_tensors_take_large_scales_without_overflow(dtype):
    """ρ/‖g‖ and the plane's scales can exceed fp16's range (65,504) although scale × tensor
    fits; the plain optimizer may hold fp16/bf16 parameters, so the scale is never cast to it."""
    theta = split(torch.ones(8, dtype=dtype))
    core.ascent_step_(theta, split(torch.zeros(8, dtype=dtype)), 0.15)
    assert torch.equal(flat(theta), torch.ones(8, dtype=dtype))  # zero gradient: no step
    g = torch.tensor([1e-6, -1e-6, 5e-7, 0, 0, 0, 0, 2e-7], dtype=dtype)
    theta = split(torch.ones(8, dtype=dtype))
    core.ascent_step_(theta, split(g.clone()), 0.15)
    expected = 1 + 0.15 * g.double() / g.double().norm()
    assert torch.allclose(flat(theta).double(), expected, atol=1e-2)
    # a whole XSAM update with a tiny g_0 and a zero g_k: finite, θ restored
    theta, backup = split(torch.ones(8, dtype=dtype)), split(torch.empty(8, dtype=dtype))
    zeros = split(torch.zeros(8, dtype=dtype))
    core.sharpness_update(theta, split(g.clone()), backup, core.Passes(lambda: zeros), rho=0.15,
                          ascent_steps=1, variant="fixed", alpha=1.5)
    assert torch.equal(flat(theta), torch.ones(8, dtype=dtype))
    # the descent gradient ‖g_k‖·d(α) with ‖g_k‖ = 0: exactly zero (finite, no 0·inf)
    assert torch.equal(flat(zeros), torch.zeros(8, dtype=dtype))


def test_pick_alpha_argmax_ties_and_non_finite():
    grid = [0.0, 0.5, 1.0, 1.5]
    assert core.pick_alpha(torch.tensor([1.0, 3.0, 3.0, 2.0]), grid) == 1  # tie: smallest α
    assert core.pick_alpha(torch.tensor([1.0, float("nan"), float("inf"), 2.0]), grid) == 3
    assert core.pick_alpha(torch.tensor([float("nan")] * 4), grid) is None


# -- the whole update against a float64 reference written from ALGORITHM.md --------------------

A = torch.tensor([[3.0, 0.5, 0.0, 0.2], [0.5, 1.0, 0.3, 0.0], [0.0, 0.3, 0.5, 0.1],
                  [0.2, 0.0, 0.1, 2.0]], dtype=torch.float64)
B = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)


def quartic_loss(x):
    """A non-quadratic loss, so gradients at different points are not collinear."""
    return 0.5 * x @ A @ x + B @ x + 0.1 * (x ** 4).sum()


def grad_at(x):
    x = x.detach().clone().requires_grad_(True)
    quartic_loss(x).backward()
    return x.grad


def reference_descent(theta, rho, k, variant, alpha):
    """The descent gradient of ALGORITHM.md, one vector, float64, straight from the text."""
    points, grads = [theta], [grad_at(theta)]
    for _ in range(k):
        points.append(points[-1] + (rho / k) * grads[-1] / grads[-1].norm())
        grads.append(grad_at(points[-1]))
    gk = grads[-1]
    if variant in ("xsam", "fixed"):
        return gk.norm() * slerp_reference(points[-1] - theta, gk, alpha)
    if variant == "sam":
        return gk
    first = 0 if variant.endswith("+") else 1
    terms = grads[first:]
    if variant.startswith("lsam"):
        terms = [g / g.norm() for g in terms]
    c = sum(terms)
    return gk.norm() * c / c.norm()


def run_core(theta0, rho, k, variant, alpha):
    shapes = ((2,), (2,))
    theta = split(theta0.clone(), shapes)
    grads_store = [split(grad_at(theta0), shapes)]

    def compute_grad():
        grads_store[0] = split(grad_at(flat(theta)), shapes)
        return grads_store[0]

    backup = [torch.empty_like(t) for t in theta]
    passes = core.Passes(compute_grad, lambda: quartic_loss(flat(theta)))
    info = core.sharpness_update(theta, grads_store[0], backup, passes, rho=rho, ascent_steps=k,
                                 variant=variant, alpha=alpha)
    return flat(theta), flat(grads_store[0]), info


@pytest.mark.parametrize("variant", list(core.VARIANTS))
@pytest.mark.parametrize("k", [1, 3])
def test_descent_gradient_matches_reference(variant, k):
    theta0 = torch.tensor([0.7, -0.4, 1.1, 0.3], dtype=torch.float64)
    alpha = 0.0 if variant == "sam" else 1.4
    theta, descent, info = run_core(theta0, 0.2, k, variant, alpha)
    assert torch.equal(theta, theta0)  # restored bit for bit
    expected = reference_descent(theta0, 0.2, k, variant, alpha)
    assert torch.allclose(descent, expected, rtol=1e-9, atol=1e-12), (descent, expected)
    assert math.isclose(float(descent.norm()), float(info.grad_norm), rel_tol=1e-9)


def test_alpha_one_is_sam():
    theta0 = torch.tensor([0.7, -0.4, 1.1, 0.3], dtype=torch.float64)
    _, xsam, _ = run_core(theta0, 0.2, 1, "fixed", 1.0)
    _, sam, _ = run_core(theta0, 0.2, 1, "sam", 0.0)
    assert torch.allclose(xsam, sam, rtol=1e-12, atol=1e-14)


def test_k_step_ascent_follows_the_normalised_gradient_at_each_point():
    """θ_{i+1} = θ_i + (ρ/k)·g_i/‖g_i‖ with g_i the gradient at θ_i (ALGORITHM.md step 1),
    recomputed independently point for point. ‖θ_k − θ‖ is ρ only along a straight path: on this
    loss the path bends, so it is strictly less (an ascent that reused g_0 would land at ρ)."""
    theta0 = torch.tensor([0.7, -0.4, 1.1, 0.3], dtype=torch.float64)
    seen = []
    shapes = ((4,),)
    theta = split(theta0.clone(), shapes)

    def compute_grad():
        seen.append(flat(theta).clone())
        return split(grad_at(flat(theta)), shapes)

    core.sharpness_update(theta, split(grad_at(theta0), shapes),
                          [torch.empty(4, dtype=torch.float64)],
                          core.Passes(compute_grad, lambda: quartic_loss(flat(theta))), rho=0.3,
                          ascent_steps=4, variant="sam", alpha=1.0)
    expected = [theta0]
    for _ in range(4):
        g = grad_at(expected[-1])
        expected.append(expected[-1] + (0.3 / 4) * g / g.norm())
    assert len(seen) == 4  # g at θ_1, θ_2, θ_3 (ascent) and θ_4 (the descent's g_k)
    for got, want in zip(seen, expected[1:]):
        assert torch.allclose(got, want, rtol=0, atol=1e-14), (got, want)
    distance = float((seen[-1] - theta0).norm())
    assert math.isclose(distance, float((expected[-1] - theta0).norm()), rel_tol=1e-12)
    assert 0.29 < distance < 0.3 - 1e-6, distance  # bent: less than ρ, though nearly ρ


def test_search_picks_the_maximising_direction_on_a_quadratic():
    # L = ½ θᵀHθ with one very curved direction: the loss on the probe circle peaks where d(α)
    # points most along that direction, computable in closed form over the grid.
    H = torch.diag(torch.tensor([10.0, 1.0, 0.1], dtype=torch.float64))
    theta0 = torch.tensor([0.05, 1.0, 2.0], dtype=torch.float64)
    loss = lambda x: 0.5 * x @ H @ x  # noqa: E731
    theta = [theta0.clone()]

    def g(x):
        return H @ x

    def compute_grad():
        return [g(theta[0])]

    rho, probe = 0.5, 1.5
    grid = core.alpha_grid(2.0, 0.1)
    info = core.sharpness_update(theta, [g(theta0)], [torch.empty(3, dtype=torch.float64)],
                                 core.Passes(compute_grad, lambda: loss(theta[0])),
                                 rho=rho, ascent_steps=1, variant="xsam", alpha=1.0,
                                 search=core.Search(tuple(grid), probe))
    theta1 = theta0 + rho * g(theta0) / g(theta0).norm()
    expected = [float(loss(theta0 + probe * slerp_reference(theta1 - theta0, g(theta1), a)))
                for a in grid]
    best = max(range(len(grid)), key=lambda i: (expected[i], -i))
    assert info.searched and info.alpha == grid[best]
    assert torch.allclose(info.probe_losses, torch.tensor(expected, dtype=torch.float64), rtol=1e-9)
    assert 0.0 < info.alpha  # the local gradient's direction (α = 0) is not the maximiser here


def test_parameters_restored_when_a_pass_raises():
    theta0 = torch.tensor([0.7, -0.4, 1.1, 0.3], dtype=torch.float64)
    theta = [theta0.clone()]

    def failing():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        core.sharpness_update(theta, [grad_at(theta0)], [torch.empty(4, dtype=torch.float64)],
                              core.Passes(failing), rho=0.2, ascent_steps=1, variant="xsam",
                              alpha=1.0)
    assert torch.equal(theta[0], theta0)


# -- the α search's edge and the expanding search (alpha_max='auto') ----------------------------

def search_on(A, b, theta0, rho, probe_rho, grid, expansion=None, loss=None,
              max_over_workers=None):
    """One XSAM update on the quadratic (split into several tensors); counts the probes."""
    shapes = ((2,), (3,), (1,))
    theta = split(theta0.clone(), shapes)
    quad = lambda x: 0.5 * x @ A @ x + b @ x  # noqa: E731
    loss = loss or quad
    calls = []

    def compute_loss():
        calls.append(flat(theta).clone())
        return loss(flat(theta))

    def compute_grad():
        return split(A @ flat(theta) + b, shapes)

    passes = core.Passes(compute_grad, compute_loss, **(
        {"max_over_workers": max_over_workers} if max_over_workers else {}))
    info = core.sharpness_update(theta, split(A @ theta0 + b, shapes),
                                 [torch.empty_like(t) for t in theta], passes, rho=rho,
                                 ascent_steps=1, variant="xsam", alpha=1.0,
                                 search=core.Search(tuple(grid), probe_rho, expansion))
    assert torch.equal(flat(theta), theta0)
    return info, calls


# (p, a, c, ρ, ρ'): α* = 3.37, 4.06, 2.27 past the default grid's edge; 1.21, 0.99 inside it
PAST_EDGE = [(1.0, 0.5, 1.0, 0.17, 1.0), (0.5, 0.2, 2.0, 0.04, 0.5), (1.0, 1.0, 1.0, 0.2, 0.5)]
INSIDE = [(1.0, 0.5, 1.0, 0.6, 1.0), (1.0, 0.5, 1.0, 0.5, 0.5)]


@pytest.mark.parametrize("p,a,c,rho,probe_rho", PAST_EDGE)
def test_expanding_search_lands_within_one_step_of_the_closed_form_maximum(p, a, c, rho,
                                                                          probe_rho):
    A, b, theta0, phi = plane_quadratic(p, a, c, rho)
    expected = closed_form_alpha(p, c, probe_rho, phi)
    assert 2.1 < expected < 6.0 and expected * phi < math.pi
    grid, expansion = core.search_plan("auto", 0.1, 40)
    assert grid == core.alpha_grid(2.0, 0.1) and expansion == core.Expansion(0.1, 40)
    info, calls = search_on(A, b, theta0, rho, probe_rho, grid, expansion)
    assert info.searched and abs(info.alpha - expected) < 0.1 + 1e-9, (info.alpha, expected)
    assert math.isclose(float(info.phi), phi, rel_tol=1e-9)
    assert not info.at_edge and info.edge is None
    # it stopped at the first probe whose loss fell: one past α*, no further
    assert info.probe_alphas[-2] == info.alpha and len(calls) == len(info.probe_alphas)
    assert info.probe_alphas == [round(0.1 * i, 12) for i in range(len(calls))]
    assert len(calls) == 21 + round((info.alpha - 2.0) / 0.1) + 1
    # the probes are where d(α) says, and their losses follow L(ψ) of the closed form
    psi = torch.tensor(info.probe_alphas, dtype=torch.float64) * phi
    L0 = float(0.5 * theta0 @ A @ theta0 + b @ theta0)
    closed = (L0 + probe_rho * p * torch.cos(psi)
              + 0.5 * probe_rho ** 2 * (a + c * torch.sin(2 * psi)))
    assert torch.allclose(info.probe_losses, closed, rtol=1e-10, atol=1e-12)

    # the paper's fixed grid stops at 2 and says so
    fixed, calls = search_on(A, b, theta0, rho, probe_rho, core.alpha_grid(2.0, 0.1))
    assert fixed.alpha == 2.0 and fixed.at_edge and fixed.edge == core.EDGE_GRID
    assert len(calls) == 21 and torch.equal(fixed.probe_losses, info.probe_losses[:21])


@pytest.mark.parametrize("p,a,c,rho,probe_rho", INSIDE)
def test_maximum_inside_the_grid_gives_todays_alpha_with_or_without_auto(p, a, c, rho, probe_rho):
    A, b, theta0, phi = plane_quadratic(p, a, c, rho)
    expected = closed_form_alpha(p, c, probe_rho, phi)
    assert 0.1 < expected < 1.9
    fixed, fixed_calls = search_on(A, b, theta0, rho, probe_rho, core.alpha_grid(2.0, 0.1))
    auto, auto_calls = search_on(A, b, theta0, rho, probe_rho, *core.search_plan("auto", 0.1, 40))
    assert abs(fixed.alpha - expected) < 0.1
    assert auto.alpha == fixed.alpha and not auto.at_edge and not fixed.at_edge
    assert auto.probe_alphas == fixed.probe_alphas and len(auto_calls) == len(fixed_calls) == 21
    assert torch.equal(auto.probe_losses, fixed.probe_losses)
    assert all(torch.equal(x, y) for x, y in zip(auto_calls, fixed_calls))


def test_the_other_quadratic_search_agrees_with_and_without_auto():
    # the diagonal quadratic of test_search_picks_the_maximising_direction_on_a_quadratic
    H = torch.diag(torch.tensor([10.0, 1.0, 0.1, 1.0, 2.0, 3.0], dtype=torch.float64))
    theta0 = torch.tensor([0.05, 1.0, 2.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    zero = torch.zeros(6, dtype=torch.float64)
    fixed, _ = search_on(H, zero, theta0, 0.5, 1.5, core.alpha_grid(2.0, 0.1))
    auto, calls = search_on(H, zero, theta0, 0.5, 1.5, *core.search_plan("auto", 0.1, 40))
    assert 0 < fixed.alpha < 2.0 and auto.alpha == fixed.alpha and len(calls) == 21


def rising_to_minus_u(theta0):
    """A probe loss −⟨θ − θ_0, e_0⟩ = −ρ' cos ψ on the circle: it rises all the way to −u."""
    return lambda x: -(x - theta0)[0]


@pytest.mark.parametrize("probes", [10, 40])
def test_expansion_respects_the_half_turn_and_the_probe_budget(probes):
    p, a, c, rho = 1.0, 0.5, 1.0, 1.0
    A, b, theta0, phi = plane_quadratic(p, a, c, rho)
    # α·φ ≤ π allows 2.1 … 5.3 (33 extra probes): not near a grid point, so round-off cannot flip it
    assert 5.3 * phi < math.pi < 5.4 * phi
    info, calls = search_on(A, b, theta0, rho, 0.3, *core.search_plan("auto", 0.1, probes),
                            loss=rising_to_minus_u(theta0))
    extra = min(probes, 33)
    assert len(calls) == 21 + extra  # forward passes counted at the loss function
    assert info.alpha == round(2.0 + 0.1 * extra, 12) and info.at_edge
    assert info.edge == (core.EDGE_PROBES if probes < 33 else core.EDGE_OPPOSITE)
    assert all(float(((x - theta0).norm())) == pytest.approx(0.3) for x in calls)
    assert float(torch.stack(calls)[:, 0].min() - theta0[0]) > -0.3  # never past −u


def test_half_turn_uses_the_largest_phi_over_workers():
    p, a, c, rho = 1.0, 0.5, 1.0, 1.0
    A, b, theta0, phi = plane_quadratic(p, a, c, rho)
    seen = []

    def other_worker_has_phi_one(local_phi):
        seen.append(float(local_phi))
        return torch.maximum(local_phi, torch.ones_like(local_phi))

    info, calls = search_on(A, b, theta0, rho, 0.3, *core.search_plan("auto", 0.1, 40),
                            loss=rising_to_minus_u(theta0),
                            max_over_workers=other_worker_has_phi_one)
    assert seen == [pytest.approx(phi)]
    # with φ = 1 the half turn allows α ≤ π: 2.1 … 3.1
    assert len(calls) == 21 + 11 and info.alpha == 3.1 and info.edge == core.EDGE_OPPOSITE


@pytest.mark.parametrize("after", [20.0, float("nan"), float("inf"), float("-inf")])
def test_expansion_stops_at_a_tie_or_a_non_finite_loss(after):
    A, b, theta0, phi = plane_quadratic(1.0, 0.5, 1.0, 0.17)
    scripted = [float(i) for i in range(21)] + [after, 99.0]  # rises to α = 2, then `after`

    calls_seen = []

    def loss(x):
        calls_seen.append(x)
        return torch.tensor(scripted[len(calls_seen) - 1], dtype=torch.float64)

    info, calls = search_on(A, b, theta0, 0.17, 0.5, core.alpha_grid(2.0, 0.1),
                            core.Expansion(0.1, 40), loss=loss)
    # a tie keeps the smaller α; a non-finite loss is no rise: α* = 2 is not the last probe
    assert info.alpha == 2.0 and len(calls) == 22 and not info.at_edge
    assert info.probe_alphas[-1] == 2.1


@pytest.mark.parametrize("best,n,expansion,next_within,expected", [
    (20, 21, None, False, core.EDGE_GRID), (19, 21, None, False, None),
    (0, 1, None, False, core.EDGE_GRID), (None, 21, None, False, None),
    (30, 31, core.Expansion(0.1, 10), True, core.EDGE_PROBES),
    (25, 26, core.Expansion(0.1, 10), False, core.EDGE_OPPOSITE),
    (24, 26, core.Expansion(0.1, 10), True, None)])
def test_edge_of(best, n, expansion, next_within, expected):
    assert core.edge_of(best, n, expansion, next_within) == expected


def test_search_plan_and_largest_alpha():
    assert core.search_plan(1.5, 0.5, 40) == ([0.0, 0.5, 1.0, 1.5], None)
    assert core.Search.plan(1.5, 0.5, 40, 0.3) == core.Search((0.0, 0.5, 1.0, 1.5), 0.3, None)
    assert core.Search.plan("auto", 0.1, 40, 0.3) == core.Search(
        tuple(core.alpha_grid(2.0, 0.1)), 0.3, core.Expansion(0.1, 40))
    assert core.largest_alpha(1.5, 0.5, 40) == 1.5
    assert core.largest_alpha("auto", 0.1, 40) == 6.0
    assert core.largest_alpha("auto", 0.25, 3) == 2.75
    assert core.Expansion(0.25, 3).alphas(2.0) == [2.25, 2.5, 2.75, 3.0]
