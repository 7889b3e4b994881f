"""Flatness analysis (fairseq_xsam/analysis.py, xsam-flatness, xsam-plane)
against closed forms, dense references and hand computations; then both scripts end to end on a
tiny checkpoint trained by fairseq-train with xsam_adamw."""

import json
import math
import os
import statistics
import subprocess
import sys

import pytest
import torch

from fairseq_xsam.analysis import (
    average_sharpness,
    filter_normalized_direction,
    flatten,
    hvp,
    lanczos,
    plane_surface,
    symmetric_grid,
    unflatten,
)
from fairseq_xsam.core import Passes, Search, alpha_grid, sharpness_update

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: the commands xsam-flatness and xsam-plane, by their former script names
MODULES = {"sharpness.py": "fairseq_xsam.lab.flatness", "sharpness": "fairseq_xsam.lab.flatness",
           "plane_surface.py": "fairseq_xsam.lab.plane", "plane_surface": "fairseq_xsam.lab.plane"}
BIN = os.path.dirname(sys.executable)
D = torch.float64


def sym(n, eigenvalues, seed):
    """Q diag(eigenvalues) Qᵀ with a random orthogonal Q."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D))
    return q @ torch.diag(torch.as_tensor(eigenvalues, dtype=D)) @ q.T


# --------------------------------------------------------------------------- HVP
def test_hvp_of_a_quadratic_is_A_times_w_over_a_parameter_list():
    g = torch.Generator().manual_seed(0)
    a = sym(9, torch.linspace(-3, 5, 9), seed=1)
    x1 = torch.randn(2, 3, generator=g, dtype=D, requires_grad=True)
    x2 = torch.randn(3, generator=g, dtype=D, requires_grad=True)
    w = torch.randn(9, generator=g, dtype=D)
    x = torch.cat([x1.reshape(-1), x2])
    loss = 0.5 * x @ a @ x
    hv = hvp(loss, [x1, x2], unflatten(w, [x1, x2]))
    assert torch.allclose(flatten(hv), a @ w, rtol=0, atol=1e-12)


def test_hvp_of_a_tiny_mlp_matches_the_dense_autograd_hessian():
    g = torch.Generator().manual_seed(2)
    shapes = [(4, 3), (4,), (2, 4), (2,)]
    inputs = torch.randn(5, 3, generator=g, dtype=D)
    target = torch.randn(5, 2, generator=g, dtype=D)

    def mlp_loss(w1, b1, w2, b2):
        return ((torch.tanh(inputs @ w1.T + b1) @ w2.T + b2 - target) ** 2).mean()

    params = [torch.randn(s, generator=g, dtype=D, requires_grad=True) for s in shapes]
    flat = flatten([p.detach() for p in params])

    def flat_loss(v):
        return mlp_loss(*unflatten(v, params))

    dense = torch.autograd.functional.hessian(flat_loss, flat)
    w = torch.randn(flat.numel(), generator=g, dtype=D)
    hv = hvp(mlp_loss(*params), params, unflatten(w, params))
    assert torch.allclose(flatten(hv), dense @ w, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- Lanczos
def test_lanczos_with_as_many_steps_as_dimensions_gives_the_exact_spectrum():
    eig = torch.cat([torch.logspace(2, -2, 25, dtype=D), -torch.logspace(0, -1, 5, dtype=D)])
    a = sym(30, eig, seed=3)
    res = lanczos(lambda v: a @ v, 30, k=30, iters=30, dtype=D,
                  generator=torch.Generator().manual_seed(0))
    ref = torch.linalg.eigvalsh(a).flip(0)
    assert torch.allclose(torch.tensor(res.eigenvalues, dtype=D), ref, rtol=1e-10, atol=1e-10)


def test_lanczos_top5_of_a_large_spread_spectrum_converges_in_few_steps():
    n = 400
    eig = torch.cat([100.0 * 0.6 ** torch.arange(40, dtype=D), torch.zeros(n - 60, dtype=D),
                     -torch.linspace(0.1, 3.0, 20, dtype=D)])
    a = sym(n, eig, seed=4)
    res = lanczos(lambda v: a @ v, n, k=5, iters=40, dtype=D,
                  generator=torch.Generator().manual_seed(1))
    ref = torch.linalg.eigvalsh(a).flip(0)[:5]
    assert torch.allclose(torch.tensor(res.eigenvalues, dtype=D), ref, rtol=1e-9, atol=0)
    assert res.iterations == 40 and max(res.residuals) < 1e-6


def test_lanczos_finds_repeated_eigenvalues_through_its_restarts():
    # A single Krylov space holds one copy of a repeated eigenvalue; the restart from a vector
    # orthogonal to the basis (after β ≈ 0) must find the others.
    eig = torch.tensor([7.0, 7.0, 7.0, 2.0, 2.0] + [0.0] * 11, dtype=D)
    a = sym(16, eig, seed=5)
    res = lanczos(lambda v: a @ v, 16, k=5, iters=16, dtype=D,
                  generator=torch.Generator().manual_seed(2))
    assert torch.allclose(torch.tensor(res.eigenvalues, dtype=D), eig[:5], atol=1e-9)


def test_lanczos_rejects_too_few_steps():
    with pytest.raises(ValueError, match="iters"):
        lanczos(lambda v: v, 10, k=5, iters=4)


# --------------------------------------------------------------------------- directions
def weights_for_directions():
    g = torch.Generator().manual_seed(6)
    lin = torch.randn(5, 7, generator=g, dtype=D)
    lin[2] = 0.0  # a dead unit: its direction row must be 0, not NaN
    conv = torch.randn(4, 3, 2, 2, generator=g, dtype=D) * torch.arange(1, 5, dtype=D).view(4, 1, 1, 1)
    bias = torch.randn(5, generator=g, dtype=D)
    return [lin, conv, bias]


def test_filter_normalised_direction_has_each_filters_norm_and_leaves_1d_params():
    ws = weights_for_directions()
    d = filter_normalized_direction(ws, torch.Generator().manual_seed(0))
    for w, di in zip(ws[:2], d[:2]):
        assert di.shape == w.shape and torch.isfinite(di).all()
        rows_w = torch.linalg.vector_norm(w.reshape(w.shape[0], -1), dim=1)
        rows_d = torch.linalg.vector_norm(di.reshape(w.shape[0], -1), dim=1)
        assert torch.allclose(rows_d, rows_w, rtol=1e-12, atol=0)
    assert torch.equal(d[2], torch.zeros_like(ws[2]))  # Li et al.'s "biasbn" choice
    d_w = filter_normalized_direction(ws, torch.Generator().manual_seed(0), one_d="weight")
    assert torch.equal(d_w[2], ws[2]) and torch.equal(d_w[0], d[0])
    d_other = filter_normalized_direction(ws, torch.Generator().manual_seed(1))
    assert not torch.allclose(d_other[0], d[0])  # random, not the weights themselves


def test_element_wise_direction_is_the_same_draw_scaled_by_abs_weights():
    ws = weights_for_directions()
    filt = filter_normalized_direction(ws, torch.Generator().manual_seed(3))
    elem = filter_normalized_direction(ws, torch.Generator().manual_seed(3), norm="element")
    # element: z ⊙ |w|; filter: z_j·‖w_j‖/‖z_j‖ — so elem/|w| and filt are parallel row by row
    z = elem[1] / ws[1].abs()
    zr, fr = z.reshape(4, -1), filt[1].reshape(4, -1)
    cos = (zr * fr).sum(1) / (zr.norm(dim=1) * fr.norm(dim=1))
    assert torch.allclose(cos, torch.ones(4, dtype=D), atol=1e-12)
    assert elem[2].abs().le(ws[2].abs() * 10).all() and elem[2].ne(0).all()  # 1-D perturbed
    with pytest.raises(ValueError, match="norm"):
        filter_normalized_direction(ws, norm="layer")


# --------------------------------------------------------------------------- average sharpness
def quadratic(shape, seed, eigenvalues):
    n = math.prod(shape)
    a = sym(n, eigenvalues, seed)
    g = torch.Generator().manual_seed(seed + 100)
    w_star = torch.randn(shape, generator=g, dtype=D)
    return a, w_star


def test_average_sharpness_of_a_quadratic_with_fixed_directions_is_exact():
    a, w_star = quadratic((4, 3), 7, torch.linspace(0.5, 6, 12))
    w = (w_star + 0.3).clone()  # not at the minimum: ± pairs cancel the linear term σ⟨∇L, d⟩

    def loss():
        e = (w - w_star).reshape(-1)
        return 0.5 * e @ a @ e

    g = torch.Generator().manual_seed(8)
    dirs = [torch.randn(4, 3, generator=g, dtype=D) for _ in range(3)]
    sigma = 0.2
    before = w.clone()
    res = average_sharpness([w], loss, sigma, [[s * d] for d in dirs for s in (1, -1)])
    expected = sum(sigma ** 2 / 2 * float(d.reshape(-1) @ a @ d.reshape(-1)) for d in dirs) / 3
    assert res.average == pytest.approx(expected, rel=1e-12)
    assert res.loss == pytest.approx(float(loss()), rel=0) and torch.equal(w, before)


def test_average_sharpness_over_filter_normalised_directions_matches_the_closed_form():
    # At the minimum: L(θ+σd) − L(θ) = σ²/2 dᵀAd. Filter j of d is uniform on the sphere of radius
    # ‖θ_j‖ (c = 3 entries), filters independent: E[ddᵀ] = blockdiag(‖θ_j‖²/c · I), so
    # E = σ²/2 · Σ_j ‖θ_j‖²/c · tr(A_jj).
    a, w_star = quadratic((4, 3), 9, torch.linspace(0.1, 10, 12))
    w = w_star.clone()

    def loss():
        e = (w - w_star).reshape(-1)
        return 0.5 * e @ a @ e

    sigma, m = 0.3, 3000
    g = torch.Generator().manual_seed(10)
    res = average_sharpness([w], loss, sigma,
                            (filter_normalized_direction([w], g) for _ in range(m)))
    blocks = torch.diagonal(a).reshape(4, 3).sum(1)
    expected = sigma ** 2 / 2 * float((w_star.norm(dim=1) ** 2 / 3 * blocks).sum())
    assert len(res.per_direction) == m and res.stderr > 0
    assert abs(res.average - expected) < 4 * res.stderr, (res.average, expected, res.stderr)
    assert torch.equal(w, w_star)


# --------------------------------------------------------------------------- plane surface
class Quad:
    """L(θ) = ½θᵀAθ − bᵀθ over θ = (θ_1 ∈ R^{2×3}, θ_2 ∈ R^4)."""

    def __init__(self, seed, eigenvalues):
        self.a = sym(10, eigenvalues, seed)
        g = torch.Generator().manual_seed(seed + 1)
        self.b = torch.randn(10, generator=g, dtype=D)
        self.theta = [torch.randn(2, 3, generator=g, dtype=D), torch.randn(4, generator=g, dtype=D)]

    def value(self, x):
        return 0.5 * x @ self.a @ x - self.b @ x

    def grad_at(self, x):
        return self.a @ x - self.b

    def loss(self):
        return self.value(flatten(self.theta))

    def grad(self):
        # by autograd (as the scripts do), so a caller that disabled gradients would fail here
        x = flatten(self.theta).requires_grad_(True)
        (g,) = torch.autograd.grad(self.value(x), x)
        return unflatten(g, self.theta)


def test_plane_surface_on_a_quadratic_matches_a_hand_computation():
    q = Quad(11, torch.linspace(-1, 8, 10))
    rho, probe_rho, grid, extent = 0.4, 1.1, 7, 1.5
    before = [t.clone() for t in q.theta]
    s = plane_surface(q.theta, q.grad, q.loss, rho=rho, probe_rho=probe_rho, grid=grid,
                      extent=extent)
    assert all(torch.equal(x, y) for x, y in zip(q.theta, before))  # θ restored bit for bit

    x = flatten(before)
    g0 = q.grad_at(x)
    u = g0 / g0.norm()
    g1 = q.grad_at(x + rho * u)
    v = g1 / g1.norm()
    cos = float(u @ v)
    phi = math.acos(cos)
    e2 = (v - cos * u) / (v - cos * u).norm()
    assert s.phi == pytest.approx(phi, rel=1e-10) and not s.degenerate
    # α = 0: d = u, the normalised g_0; α = 1: d = v, the normalised g_k (plane coordinates)
    assert s.probe_dirs[0] == pytest.approx([1.0, 0.0], abs=1e-12)
    assert s.g0_dir == pytest.approx([1.0, 0.0], abs=1e-12) and s.g0_in_plane == pytest.approx(1)
    i1 = s.alpha_grid.index(1.0)
    assert s.probe_dirs[i1] == pytest.approx([cos, math.sin(phi)], abs=1e-12)
    assert s.gk_dir == pytest.approx([float(v @ u), float(v @ e2)], abs=1e-12)
    assert s.ascent_points == [pytest.approx([rho, 0.0], abs=1e-12)]
    # probes: slerp written out in full space, α* its argmax
    probes = []
    for al in s.alpha_grid:
        d = (math.sin((1 - al) * phi) * u + math.sin(al * phi) * v) / math.sin(phi)
        probes.append(float(q.value(x + probe_rho * d)))
    assert s.probe_losses == pytest.approx(probes, rel=1e-10)
    assert s.alpha_star == s.alpha_grid[max(range(len(probes)), key=probes.__getitem__)]
    # the grid: exact L(θ) at the centre, the hand value elsewhere
    coords = symmetric_grid(extent, grid)
    assert s.a == coords and coords[grid // 2] == 0.0
    assert s.losses[grid // 2][grid // 2] == float(q.value(x)) == s.loss0
    for i, j in ((0, 0), (1, 5), (6, 2)):
        ref = float(q.value(x + coords[j] * u + coords[i] * e2))
        assert s.losses[i][j] == pytest.approx(ref, rel=1e-10)
    # the optimizer's own update (core.sharpness_update) sees the same φ and picks the same α
    theta = [t.clone() for t in before]
    passes = Passes(lambda: unflatten(q.grad_at(flatten(theta)), theta),
                    lambda: q.value(flatten(theta)))
    info = sharpness_update(theta, unflatten(g0.clone(), theta), [torch.empty_like(t) for t in theta],
                            passes, rho=rho, ascent_steps=1, variant="xsam", alpha=1.0,
                            search=Search(tuple(alpha_grid(2.0, 0.1)), probe_rho))
    assert float(info.phi) == pytest.approx(s.phi, rel=1e-10) and info.alpha == s.alpha_star


def test_plane_surface_multi_step_projects_g0_and_puts_theta_k_on_the_first_axis():
    q = Quad(12, torch.linspace(0.5, 9, 10))
    rho, k = 0.6, 3
    s = plane_surface(q.theta, q.grad, q.loss, rho=rho, probe_rho=1.0, ascent_steps=k, grid=3)
    x = flatten(q.theta)
    pts, y = [], x.clone()
    for _ in range(k):
        gi = q.grad_at(y)
        y = y + (rho / k) * gi / gi.norm()
        pts.append(y - x)
    u = pts[-1] / pts[-1].norm()
    v = q.grad_at(y) / q.grad_at(y).norm()
    e2 = (v - (v @ u) * u) / (v - (v @ u) * u).norm()
    g0 = q.grad_at(x)
    proj = torch.stack([g0 @ u, g0 @ e2])
    assert s.g0_dir == pytest.approx((proj / proj.norm()).tolist(), abs=1e-10)
    assert s.g0_in_plane == pytest.approx(float(proj.norm() / g0.norm()), rel=1e-10)
    assert s.g0_in_plane < 1
    assert s.ascent_points[-1] == pytest.approx([float(pts[-1].norm()), 0.0], abs=1e-12)
    assert s.ascent_points[0] == pytest.approx([float(pts[0] @ u), float(pts[0] @ e2)], abs=1e-12)


def test_plane_surface_degenerate_plane_uses_sam_direction():
    # A = 3·I: g_k ∥ g_0, sin φ ≈ 0, d(α) = v for every α (ALGORITHM.md step 3)
    q = Quad(13, torch.full((10,), 3.0))
    before = [t.clone() for t in q.theta]
    s = plane_surface(q.theta, q.grad, q.loss, rho=0.2, probe_rho=0.5, grid=5,
                      generator=torch.Generator().manual_seed(0))
    assert s.degenerate
    assert all(d == pytest.approx(s.gk_dir, abs=1e-9) for d in s.probe_dirs)
    assert s.gk_dir == pytest.approx([1.0, 0.0], abs=1e-9) and s.alpha_star == 0.0
    assert all(torch.equal(x, y) for x, y in zip(q.theta, before))
    assert all(math.isfinite(v) for row in s.losses for v in row)


# --------------------------------------------------------------------------- fairseq end to end
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from fairseq_helpers import TINY_ARCH, make_corpus

    folder = tmp_path_factory.mktemp("analysis")
    data = make_corpus(str(folder), n_train=120, n_valid=10)
    save = str(folder / "ck")
    cmd = [os.path.join(BIN, "fairseq-train"), data, "--user-dir",
           os.path.join(ROOT, "fairseq_xsam"), "--task", "translation", "--cpu", *TINY_ARCH,
           "--optimizer", "xsam_adamw", "--rho", "0.1", "--probe-rho", "0.3", "--lr", "2e-3",
           "--dropout", "0.1", "--criterion", "label_smoothed_cross_entropy",
           "--label-smoothing", "0.1", "--max-tokens", "500", "--max-update", "4", "--seed", "3",
           "--save-dir", save, "--no-progress-bar", "--num-workers", "0",
           "--no-epoch-checkpoints"]
    out = subprocess.run(cmd, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    return data, os.path.join(save, "checkpoint_last.pt"), folder


def run_script(name, *args):
    out = subprocess.run([sys.executable, "-m", MODULES[name], *args],
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return out


def test_sharpness_script_writes_the_flatness_json(checkpoint):
    data, ck, folder = checkpoint
    out_json = str(folder / "run" / "eval" / "sharpness.json")
    out = run_script("sharpness.py", ck, "--data", data, "--cpu", "--batches", "2",
                     "--max-tokens", "300", "--lanczos-iters", "15", "--directions", "8",
                     "--sigma", "0.05", "--out", out_json)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "λ_max/λ_5" in out.stdout
    res = json.load(open(out_json))
    for key in ("lambda_max", "lambda_top", "lambda_ratio", "avg_sharpness", "sigma",
                "directions", "batches", "checkpoint"):
        assert key in res, key
    lam = res["lambda_top"]
    assert len(lam) == 5 and all(math.isfinite(x) for x in lam)
    assert lam == sorted(lam, reverse=True) and res["lambda_max"] == lam[0] >= lam[4]
    assert res["lambda_ratio"] == pytest.approx(lam[0] / lam[4])
    assert math.isfinite(res["avg_sharpness"]) and res["directions"] == 8
    assert res["batches"] == 2 and res["sigma"] == 0.05 and res["checkpoint"] == ck


def test_flatness_batches_are_a_sample_of_the_split_not_its_shortest_sentences(checkpoint):
    """fairseq's unshuffled order sorts by length: its first batches are the shortest sentences.
    The default takes the batches of fairseq's first training epoch with seed 1 (shuffled, the
    same every time)."""
    sharpness = load_script("sharpness")
    data, ck, _ = checkpoint

    def sources(*extra):
        setup = sharpness.load_setup(sharpness.parse_args(
            [ck, "--data", data, "--cpu", "--batches", "3", "--max-tokens", "300", *extra]))
        return sorted(int(i) for s in setup.samples for i in s["id"])

    shuffled, again, short = sources(), sources(), sources("--batch-order", "sorted")
    assert shuffled == again and shuffled != short
    from fairseq.data.indexed_dataset import make_dataset
    dataset = make_dataset(os.path.join(data, "train.de-en.de"), impl="mmap")
    sizes = [int(x) for x in dataset.sizes]  # a copy: the sizes live in the dataset's mmap
    # the sorted order's batches hold the shortest sentences; the shuffled ones are longer
    assert max(sizes[i] for i in short) <= sorted(sizes)[len(short)]
    assert statistics.mean(sizes[i] for i in shuffled) > statistics.mean(sizes[i] for i in short)


def test_fairseq_hvp_matches_finite_differences_of_the_gradient(checkpoint, monkeypatch):
    # The HVP through the real Transformer (math attention, shared params) in float64 against
    # (∇L(θ + εw) − ∇L(θ − εw)) / 2ε, and symmetric: ⟨z, Hw⟩ = ⟨w, Hz⟩.
    import fairseq.utils
    import torch.nn.functional as F

    # fairseq computes log-probabilities in float32 even for a float64 model: keep float64
    monkeypatch.setattr(fairseq.utils, "log_softmax",
                        lambda x, dim, onnx_trace=False: F.log_softmax(x, dim=dim))
    monkeypatch.setattr(fairseq.utils, "softmax",
                        lambda x, dim, onnx_trace=False: F.softmax(x, dim=dim))
    sharpness = load_script("sharpness")
    data, ck, _ = checkpoint
    setup = sharpness.load_setup(sharpness.parse_args(
        [ck, "--data", data, "--cpu", "--batches", "2", "--max-tokens", "300"]))
    setup.model.double()
    params = setup.params
    assert setup.loss().dtype == D
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(p.shape, generator=g, dtype=D) for p in params]
    torch._foreach_mul_(w, 1.0 / float(flatten(w).norm()))
    z = [torch.randn(p.shape, generator=g, dtype=D) for p in params]
    hv, hz = flatten(setup.hvp(w)), flatten(setup.hvp(z))
    assert float(flatten(z) @ hv) == pytest.approx(float(flatten(w) @ hz), rel=1e-9)
    eps = 1e-6
    base = [p.detach().clone() for p in params]
    with torch.no_grad():
        torch._foreach_add_(params, w, alpha=eps)
    gp = flatten(setup.grad())
    with torch.no_grad():
        torch._foreach_copy_(params, base)
        torch._foreach_add_(params, w, alpha=-eps)
    gm = flatten(setup.grad())
    with torch.no_grad():
        torch._foreach_copy_(params, base)
    fd = (gp - gm) / (2 * eps)
    assert hv.dtype == D and float((hv - fd).norm() / fd.norm()) < 1e-6


def test_plane_surface_script_writes_png_and_grid(checkpoint):
    data, ck, folder = checkpoint
    png, js = str(folder / "plane.png"), str(folder / "plane.json")
    out = run_script("plane_surface.py", ck, "--data", data, "--cpu", "--max-tokens", "300",
                     "--grid", "9", "--out", png, "--json", js)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(png, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 10000
    res = json.load(open(js))
    assert (res["rho"], res["probe_rho"]) == (0.1, 0.3)  # the checkpoint's xsam_adamw settings
    losses = res["losses"]
    assert len(losses) == 9 and all(len(r) == 9 for r in losses)
    assert all(math.isfinite(v) for r in losses for v in r)
    assert losses[4][4] == res["loss0"]
    assert res["alpha_star"] in res["alpha_grid"] and 0 < res["phi"] < math.pi
    # k = 1: d(0) = u ∥ g_0, up to fp32 rounding of u = θ_1 − θ at the weights' scale (≈1e-6)
    assert res["probe_dirs"][0] == pytest.approx(res["g0_dir"], abs=1e-5)
    i1 = res["alpha_grid"].index(1.0)
    assert res["probe_dirs"][i1] == pytest.approx(res["gk_dir"], abs=1e-6)


def load_script(name):
    import importlib

    return importlib.import_module(MODULES[name])


@pytest.mark.parametrize("script,args,message", [
    ("sharpness", ["--sigma", "0"], "invalid --sigma value: '0' (allowed: --sigma > 0)"),
    ("sharpness", ["--directions", "0"], "invalid --directions value: '0'"),
    ("sharpness", ["--lanczos-iters", "3"], "invalid --lanczos-iters value: 3"),
    ("plane_surface", ["--grid", "4"], "invalid --grid value: '4' (allowed: an odd integer"),
    ("plane_surface", ["--probe-rho", "-1"], "invalid --probe-rho value: '-1'"),
])
def test_bad_options_fail_with_one_line_naming_the_option(script, args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script(script).main(["missing.pt", *args])
    assert exit_.value.code == 2
    last = [line for line in capsys.readouterr().err.splitlines() if line.strip()][-1]
    assert message in last, last


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="checkpoint: no such file"):
        load_script("sharpness").main([str(tmp_path / "missing.pt")])
