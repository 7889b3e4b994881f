"""Every variant of the ``XSAM`` class against an independent float64 reference, over 20 steps.

The reference below is ALGORITHM.md written plainly: one tensor at a time, Python loops and
sums, φ from atan2(‖v − ⟨u,v⟩u‖, ⟨u,v⟩) (not the package's chord formula), SGD with momentum
and weight decay written out. The package must agree with it to ≤ 1e-10 relative over 20 steps
on random models (parameters of several shapes, a zero-size one, one that never gets a gradient),
for k = 1 and 3, ASAM on and off, with and without α searches, at generic angles φ and at φ near
0 and near π (where d(α) is ill-conditioned: a check of the order of operations). Each case runs
both ways the core forms y + s·x (one broadcast sweep: CPU, one flat tensor; or scale in place
first: many CUDA tensors), see ``core.one_sweep_axpy``.
"""

import math

import pytest
import torch

from fairseq_xsam import XSAM, alpha_grid, core

SHAPES = [(3, 4), (4,), (0,), (2, 3, 2), (5,)]
RTOL = 1e-10
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 0.01
DEGENERATE_SIN, TINY = 1e-6, 1e-30  # ALGORITHM.md: sin φ ~ 0 → v (SAM); a zero norm → no step


@pytest.fixture(params=["one-sweep", "scale-first"])
def path(request, monkeypatch):
    if request.param == "scale-first":  # the many-CUDA-tensors path, here on the CPU
        monkeypatch.setattr(core, "one_sweep_axpy", lambda tensors: False)
    return request.param


# -- the models ---------------------------------------------------------------------------------

def make_model(seed, regime):
    """(parameters, loss of the flat parameter vector, unused parameter).

    ``generic``: random sines plus a quartic; ``near0``/``nearpi``: one dominant sine along a
    unit direction w plus a weak random quadratic, placed so that the ascent (ρ = 0.5) stays on
    the rising flank (g_k almost parallel to g_0: φ ≈ 0) or crosses the crest (φ ≈ π)."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
    n = sum(p.numel() for p in params)
    if regime == "generic":
        W = 4 * torch.randn(8, n, generator=g, dtype=torch.float64) / math.sqrt(n)
        b = torch.randn(8, generator=g, dtype=torch.float64)
        c = torch.randn(8, generator=g, dtype=torch.float64)

        def loss(x):
            return (c * torch.sin(W @ x + b)).sum() + 0.01 * (x ** 4).sum() + 0.1 * x @ x
    else:
        w = torch.randn(n, generator=g, dtype=torch.float64)
        w = w / w.norm()
        H = torch.randn(n, n, generator=g, dtype=torch.float64)
        H = 1e-4 * (H @ H.T) / n
        start = 0.2 if regime == "near0" else 1.4  # w·x at θ; the ascent adds about ρ = 0.5
        flat = torch.cat([p.reshape(-1) for p in params])
        flat = flat - (w @ flat - start) * w
        params = [t.reshape(s).clone() for t, s in zip(flat.split([p.numel() for p in params]),
                                                         SHAPES)]

        def loss(x):
            return torch.sin(w @ x) + 0.5 * x @ H @ x
    unused = torch.randn(3, generator=g, dtype=torch.float64)
    return params, loss, unused


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


# -- the reference --------------------------------------------------------------------------------

def ref_grad(loss, params):
    x = [p.detach().clone().requires_grad_(True) for p in params]
    value = loss(flat(x))
    grads = torch.autograd.grad(value, x, allow_unused=True)
    return [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)]


def ref_dot(a, b):
    total = 0.0
    for x, y in zip(a, b):
        total += float((x * y).sum())
    return total


def ref_norm(a):
    return math.sqrt(ref_dot(a, a))


def ref_descent(params, loss, rho, k, variant, alpha, adaptive, eta, search, probe_rho):
    """(descent gradient, α used, φ) of one update, straight from ALGORITHM.md."""
    theta = [p.clone() for p in params]
    scale = [p.abs() + eta for p in theta] if adaptive else None
    points, grads = [theta], [ref_grad(loss, theta)]
    for _ in range(k):
        g = grads[-1]
        if adaptive:
            tg = [t * x for t, x in zip(scale, g)]
            n = ref_norm(tg)
            step = [(rho / k) * t * x / n if n > TINY else torch.zeros_like(x)
                    for t, x in zip(scale, tg)]
        else:
            n = ref_norm(g)
            step = [(rho / k) * x / n if n > TINY else torch.zeros_like(x) for x in g]
        points.append([p + e for p, e in zip(points[-1], step)])
        grads.append(ref_grad(loss, points[-1]))
    gk = grads[-1]
    gk_norm = ref_norm(gk)
    if variant == "sam":
        return gk, alpha, None
    if variant in ("msam", "msam+", "lsam", "lsam+"):
        terms = grads[0 if variant.endswith("+") else 1:]
        if variant.startswith("lsam"):
            terms = [[x / ref_norm(t) for x in t] for t in terms]
        c = [sum(parts) for parts in zip(*terms)]
        return [gk_norm * x / ref_norm(c) for x in c], alpha, None
    disp = [a - b for a, b in zip(points[-1], theta)]
    dn = ref_norm(disp)
    u = [x / dn for x in disp]
    v = [x / gk_norm for x in gk]
    cos = ref_dot(u, v)
    sin = ref_norm([y - cos * x for x, y in zip(u, v)])
    phi = math.atan2(sin, cos)
    degenerate = dn <= TINY or gk_norm <= TINY or math.sin(phi) < DEGENERATE_SIN

    def d(a):
        if degenerate:
            return v
        cu, cv = math.sin((1 - a) * phi) / math.sin(phi), math.sin(a * phi) / math.sin(phi)
        return [cu * x + cv * y for x, y in zip(u, v)]

    if search and not degenerate:
        losses = [float(loss(flat([p + probe_rho * e for p, e in zip(theta, d(a))])))
                  for a in search]
        best = max(losses)
        alpha = search[losses.index(best)]  # the first maximum: ties → the smallest α
    return [gk_norm * x for x in d(alpha)], alpha, phi


class Reference:
    """XSAM + SGD (momentum, weight decay), per tensor, float64."""

    def __init__(self, params, loss, **cfg):
        self.params, self.loss, self.cfg = [p.clone() for p in params], loss, cfg
        self.buf = None
        self.alpha, self.steps = cfg["alpha"], 0
        self.phis = []

    def step(self):
        c = self.cfg
        every = c["search_every"]
        search = (alpha_grid(2.0, 0.1) if c["variant"] == "xsam" and every
                  and self.steps % every == 0 else None)
        desc, alpha, phi = ref_descent(self.params, self.loss, c["rho"], c["k"], c["variant"],
                                       self.alpha, c["adaptive"], c["eta"], search,
                                       c["probe_rho"])
        self.alpha = alpha
        self.phis.append(phi)
        desc = [g + WEIGHT_DECAY * p for g, p in zip(desc, self.params)]
        self.buf = desc if self.buf is None else [MOMENTUM * b + g for b, g in zip(self.buf, desc)]
        self.params = [p - LR * b for p, b in zip(self.params, self.buf)]
        self.steps += 1


# -- the package ----------------------------------------------------------------------------------

def run_package(params, loss, unused, steps, **cfg):
    ps = [torch.nn.Parameter(p.clone()) for p in params] + [torch.nn.Parameter(unused.clone())]
    opt = XSAM(ps, torch.optim.SGD, rho=cfg["rho"], probe_rho=cfg["probe_rho"],
               ascent_steps=cfg["k"], sam_variant=cfg["variant"], alpha=cfg["alpha"],
               alpha_search=cfg["search_every"], adaptive=cfg["adaptive"], asam_eta=cfg["eta"],
               lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    trajectory, alphas = [], []
    for _ in range(steps):
        opt.step(lambda: loss(flat(ps[:-1])))
        trajectory.append(flat([p.detach() for p in ps[:-1]]).clone())
        alphas.append(opt.alpha)
    assert ps[-1].grad is None and torch.equal(ps[-1].detach(), unused)  # never touched
    return trajectory, alphas


CASES = [(variant, k, adaptive) for variant in ("xsam", "fixed", "sam", "msam", "msam+", "lsam",
                                                 "lsam+")
         for k in (1, 3) for adaptive in (False, True)]


def check(regime, variant, k, adaptive, seed=0, steps=20):
    params, loss, unused = make_model(seed, regime)
    eta = 0.01 if regime == "generic" else 1000.0
    rho = 0.3 if regime == "generic" else 0.5 / (eta if adaptive else 1.0)  # |ε| ≈ ρη under ASAM
    cfg = dict(rho=rho, probe_rho=0.9, k=k, variant=variant,
               alpha=0.0 if variant == "sam" else 1.4, adaptive=adaptive,
               search_every=5 if variant == "xsam" else 0,
               # ASAM at extreme angles: a large η makes T = |θ| + η almost uniform, so the
               # ascent stays (almost) along the gradient and φ stays extreme
               eta=eta)
    ref = Reference(params, loss, **cfg)
    trajectory, alphas = run_package(params, loss, unused, steps, **cfg)
    for i, theta in enumerate(trajectory):
        ref.step()
        expected = flat(ref.params)
        err = float((theta - expected).norm() / expected.norm())
        assert err <= RTOL, (i, err)
        if variant == "xsam":
            assert alphas[i] == ref.alpha, (i, alphas[i], ref.alpha)
    return ref


@pytest.mark.parametrize("variant,k,adaptive", CASES)
def test_every_variant_matches_the_reference_over_20_steps(variant, k, adaptive, path):
    ref = check("generic", variant, k, adaptive)
    if variant in ("xsam", "fixed"):  # generic angles, not a degenerate plane
        assert all(0.05 < phi < math.pi - 0.05 for phi in ref.phis), ref.phis


@pytest.mark.parametrize("regime", ["near0", "nearpi"])
@pytest.mark.parametrize("variant", ["xsam", "fixed"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_plane_variants_match_the_reference_at_extreme_angles(regime, variant, adaptive, path):
    ref = check(regime, variant, 1, adaptive)
    phi = ref.phis[0]
    if regime == "near0":
        assert 0 < phi < 1e-2, phi
    else:
        assert 0 < math.pi - phi < 5e-2, phi
    assert math.sin(phi) > 10 * DEGENERATE_SIN  # the plane itself, not the SAM fallback


@pytest.mark.parametrize("regime", ["near0", "nearpi"])
def test_k3_at_extreme_angles(regime, path):
    check(regime, "xsam", 3, False)


@pytest.mark.parametrize("variant", ["xsam", "fixed", "lsam+", "msam+"])
def test_a_zero_first_gradient_gives_g_k(variant, path):
    # g_0 = 0: no ascent (θ_k = θ), u undefined; the descent gradient is g_k = ∇L(θ)
    theta = [torch.tensor([1.0, -2.0], dtype=torch.float64), torch.zeros(0, dtype=torch.float64)]
    g_k = [torch.tensor([0.3, 0.4], dtype=torch.float64), torch.zeros(0, dtype=torch.float64)]
    grads = [torch.zeros(2, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)]
    out = [None]

    def compute_grad():
        out[0] = [t.clone() for t in g_k]
        return out[0]

    backup = [torch.empty_like(t) for t in theta]
    search = core.Search(tuple(alpha_grid(2.0, 0.5)), 0.2) if variant == "xsam" else None
    info = core.sharpness_update(theta, grads, backup,
                                 core.Passes(compute_grad, lambda: theta[0].sum()), rho=0.1,
                                 ascent_steps=1, variant=variant, alpha=1.5, search=search)
    assert torch.allclose(out[0][0], g_k[0], rtol=1e-15, atol=0) and float(info.grad_norm) == 0.5
    assert torch.equal(theta[0], torch.tensor([1.0, -2.0], dtype=torch.float64))
