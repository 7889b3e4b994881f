"""The core's tensor functions against closed forms and a float64 reference written differently."""

import math

import pytest
import torch

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


@pytest.mark.parametrize("angle", [1e-4, 0.01, 0.5, 1.5, 3.0])
def test_plane_angle_is_accurate_at_every_angle(angle):
    # u along e1, g_k at the given angle; plane_ works in float32 and must still resolve φ
    disp = split(torch.tensor([2.0, 0, 0, 0, 0, 0, 0, 0]))
    g = split(torch.tensor([math.cos(angle), math.sin(angle), 0, 0, 0, 0, 0, 0]) * 5.0)
    phi, degenerate = core.plane_(disp, g, core.global_norm(g))
    assert math.isclose(float(phi), angle, rel_tol=2e-3)
    assert not bool(degenerate)
    # u − v and v are left in place
    assert torch.allclose(flat(g), torch.tensor([math.cos(angle), math.sin(angle), 0, 0, 0, 0, 0, 0]))


def test_plane_flags_parallel_and_zero_vectors():
    e1 = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    for disp, g in ((e1, 3 * e1), (e1, -3 * e1), (0 * e1, e1), (e1, 0 * e1)):
        gl = split(g.clone())
        phi, degenerate = core.plane_(split(disp.clone()), gl, core.global_norm(gl))
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


def run_core(theta0, rho, k, variant, alpha, **kw):
    shapes = ((2,), (2,))
    theta = split(theta0.clone(), shapes)
    grads_store = [split(grad_at(theta0), shapes)]

    def compute_grad():
        grads_store[0] = split(grad_at(flat(theta)), shapes)
        return grads_store[0]

    backup = [torch.empty_like(t) for t in theta]
    info = core.sharpness_update(theta, grads_store[0], backup, rho=rho, ascent_steps=k,
                                 variant=variant, alpha=alpha, compute_grad=compute_grad,
                                 compute_loss=lambda: quartic_loss(flat(theta)), **kw)
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


def test_k_step_ascent_lands_at_distance_rho():
    theta0 = torch.tensor([0.7, -0.4, 1.1, 0.3], dtype=torch.float64)
    seen = []

    def compute_loss():
        return quartic_loss(theta_list_flat())

    shapes = ((4,),)
    theta = split(theta0.clone(), shapes)
    theta_list_flat = lambda: flat(theta)  # noqa: E731

    def compute_grad():
        seen.append(flat(theta).clone())
        return split(grad_at(flat(theta)), shapes)

    core.sharpness_update(theta, split(grad_at(theta0), shapes),
                          [torch.empty(4, dtype=torch.float64)], rho=0.3, ascent_steps=4,
                          variant="sam", alpha=1.0, compute_grad=compute_grad,
                          compute_loss=compute_loss)
    # θ_1..θ_4: each step moves ρ/k, so the last point is ≤ ρ away (= ρ along a straight path)
    steps = [b - a for a, b in zip([theta0] + seen[:-1], seen)]
    assert all(math.isclose(float(s.norm()), 0.3 / 4, rel_tol=1e-12) for s in steps)
    assert float((seen[-1] - theta0).norm()) <= 0.3 + 1e-12


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
                                 rho=rho, ascent_steps=1, variant="xsam", alpha=1.0,
                                 search_grid=grid, probe_rho=probe, compute_grad=compute_grad,
                                 compute_loss=lambda: loss(theta[0]))
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
                              rho=0.2, ascent_steps=1, variant="xsam", alpha=1.0,
                              compute_grad=failing)
    assert torch.equal(theta[0], theta0)
