"""fairseq_xsam.lab.fidelity against closed forms on quadratics L(x) = ½xᵀAx + bᵀx.

The worst case within a ball is the trust-region problem: with c = ∇L(θ) and A having a
positive eigenvalue, δ* = (λI − A)⁻¹c with λ > λ_max(A) and ‖δ*‖ = r, found here by bisection
on λ in numpy (not by ascent); with A negative definite and ‖A⁻¹c‖ < r the maximum is inside,
δ* = −A⁻¹c. The directions are recomputed from their definitions (ALGORITHM.md) in numpy.
"""

import math

import numpy as np
import pytest
import torch

from fairseq_xsam.lab import fidelity

SHAPES = [(4, 2), (4,)]  # 12 parameters in two tensors
N = 12


def make_problem(seed, eigenvalues):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    a = q @ np.diag(eigenvalues) @ q.T
    b = rng.standard_normal(N)
    x0 = 0.3 * rng.standard_normal(N)
    return a, b, x0


def as_list(vec):
    out, i = [], 0
    for shape in SHAPES:
        n = int(np.prod(shape))
        out.append(torch.tensor(vec[i:i + n], dtype=torch.float64).reshape(shape))
        i += n
    return out


def flat(tensors):
    return np.concatenate([t.reshape(-1).numpy() for t in tensors])


def quadratic(a, b, theta):
    """evaluate(grad) over the list ``theta`` (read at call time)."""
    at, bt = torch.tensor(a), torch.tensor(b)

    def evaluate(grad):
        x = torch.cat([t.reshape(-1) for t in theta])
        loss = 0.5 * x @ at @ x + bt @ x
        if not grad:
            return loss, None
        g = at @ x + bt
        return loss, [part.reshape(t.shape) for part, t in
                      zip(torch.split(g, [t.numel() for t in theta]), theta)]
    return evaluate


def loss_np(a, b, x):
    return 0.5 * x @ a @ x + b @ x


def trust_region_max(a, c, r):
    """argmax over ‖δ‖ ≤ r of ½δᵀAδ + cᵀδ for A with a positive eigenvalue (boundary case)."""
    top = np.linalg.eigvalsh(a)[-1]
    assert top > 0
    eye = np.eye(len(c))

    def norm_at(lam):
        return np.linalg.norm(np.linalg.solve(lam * eye - a, c))
    lo, hi = top + 1e-12, top + np.linalg.norm(c) / r + 1.0
    assert norm_at(lo) > r > norm_at(hi)
    for _ in range(300):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if norm_at(mid) > r else (lo, mid)
    return np.linalg.solve(0.5 * (lo + hi) * eye - a, c)


def starts(theta, r, evaluate, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g0 = evaluate(True)[1]
    return [torch._foreach_mul(g0, 1.0)] + [
        fidelity.random_start(theta, r, gen) for _ in range(2)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("r", [0.05, 0.5])
def test_worst_case_on_the_sphere_matches_trust_region_solution(seed, r):
    a, b, x0 = make_problem(seed, np.linspace(-3.0, 2.0, N))
    theta = as_list(x0)
    evaluate = quadratic(a, b, theta)
    worst = fidelity.worst_case(theta, evaluate, r, starts(theta, r, evaluate), steps=400,
                                min_step=1e-7)
    ref = trust_region_max(a, a @ x0 + b, r)
    ref_loss = loss_np(a, b, x0 + ref)
    got = flat(worst.delta)
    assert np.allclose(flat(theta), x0, rtol=0, atol=0), "θ restored bit for bit"
    assert worst.base_loss == pytest.approx(loss_np(a, b, x0), abs=1e-12)
    assert np.linalg.norm(got) <= r * (1 + 1e-9)
    assert worst.loss == pytest.approx(ref_loss, abs=1e-8 * max(1.0, abs(ref_loss - worst.base_loss)))
    cos = got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref))
    assert cos > 1 - 1e-6
    assert all(s.converged for s in worst.starts if s.loss >= worst.loss - 1e-9)


def test_worst_case_inside_the_ball_for_a_concave_loss():
    a, b, x0 = make_problem(5, -np.linspace(1.0, 4.0, N))
    c = a @ x0 + b
    inner = -np.linalg.solve(a, c)  # the unconstrained maximum, relative to θ
    r = 1.5 * np.linalg.norm(inner)
    theta = as_list(x0)
    evaluate = quadratic(a, b, theta)
    worst = fidelity.worst_case(theta, evaluate, r, starts(theta, r, evaluate), steps=400,
                                min_step=1e-9)
    assert np.linalg.norm(flat(worst.delta) - inner) < 1e-3 * np.linalg.norm(inner)
    assert worst.loss == pytest.approx(loss_np(a, b, x0 + inner), rel=1e-8)


def test_a_single_gradient_step_is_not_the_worst_case():
    """Against a closed form the ascent must beat SGD's point r·g_0/‖g_0‖ strictly when the
    curvature bends the maximum away from g_0 (a check that the ascent does ascend)."""
    a, b, x0 = make_problem(3, np.linspace(-3.0, 2.0, N))
    r = 0.5
    theta = as_list(x0)
    evaluate = quadratic(a, b, theta)
    c = a @ x0 + b
    sgd_loss = loss_np(a, b, x0 + r * c / np.linalg.norm(c))
    worst = fidelity.worst_case(theta, evaluate, r, starts(theta, r, evaluate)[:1], steps=200)
    assert worst.loss > sgd_loss + 1e-3 * (worst.loss - loss_np(a, b, x0))


def reference_directions(a, b, x0, rho, probe_rho, alpha_other):
    """The candidate directions from their definitions, in numpy float64."""
    g = lambda x: a @ x + b  # noqa: E731
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    out = {"sgd": unit(g(x0))}
    for k in (1, 3):
        x = x0.copy()
        for _ in range(k):
            x = x + (rho / k) * unit(g(x))
        out[f"sam_k{k}"] = unit(g(x))
    x1 = x0 + rho * unit(g(x0))
    u, v = unit(x1 - x0), unit(g(x1))
    phi = math.acos(np.clip(u @ v, -1, 1))

    def d(alpha):
        return (math.sin((1 - alpha) * phi) * u + math.sin(alpha * phi) * v) / math.sin(phi)
    grid = [round(0.1 * i, 12) for i in range(21)]
    losses = [loss_np(a, b, x0 + probe_rho * d(al)) for al in grid]
    best = grid[int(np.argmax(losses))]
    out["xsam"] = d(best)
    out["xsam_other"] = d(alpha_other)
    return out, best, math.degrees(phi)


def test_directions_are_the_definitions():
    a, b, x0 = make_problem(7, np.linspace(-2.0, 3.0, N))
    rho, probe_rho, alpha_other = 0.2, 0.6, 0.7
    theta = as_list(x0)
    evaluate = quadratic(a, b, theta)
    got = fidelity.directions(theta, evaluate, rho=rho, probe_rho=probe_rho,
                              alpha_other=alpha_other)
    ref, best, phi = reference_directions(a, b, x0, rho, probe_rho, alpha_other)
    assert np.array_equal(flat(theta), x0), "θ restored bit for bit"
    for name, vec in ref.items():
        assert np.allclose(flat(got[name].vector), vec, atol=1e-10), name
    assert got["xsam"].alpha == pytest.approx(best)
    assert got["xsam"].phi_deg == pytest.approx(phi, abs=1e-8)
    assert got["xsam_other"].alpha == alpha_other
    assert got["sam_k1"].vector is not got["sam_k3"].vector
    # the directions differ from each other here (else the comparison above proves little)
    assert np.linalg.norm(ref["sam_k1"] - ref["sgd"]) > 1e-3
    assert np.linalg.norm(ref["xsam"] - ref["sam_k1"]) > 1e-3
    assert np.linalg.norm(ref["sam_k3"] - ref["sam_k1"]) > 1e-4


def test_expanding_search_goes_past_the_grid_where_the_loss_still_rises():
    # a linear loss along -u beyond the plane: pick a problem where α* = 2 on the grid
    for seed in range(40):
        a, b, x0 = make_problem(seed, np.linspace(-2.0, 3.0, N))
        theta = as_list(x0)
        got = fidelity.directions(theta, quadratic(a, b, theta), rho=0.2, probe_rho=0.6)
        if got["xsam"].at_edge:
            break
    else:
        pytest.skip("no edge-pinned search among the problems")
    assert got["xsam"].alpha == 2.0
    assert got["xsam_auto"].alpha > 2.0
    assert len(got["xsam_auto"].probes) > 21


def test_score_cosine_and_fraction():
    a, b, x0 = make_problem(11, np.linspace(-3.0, 2.0, N))
    r = 0.3
    theta = as_list(x0)
    evaluate = quadratic(a, b, theta)
    worst = fidelity.worst_case(theta, evaluate, r, starts(theta, r, evaluate), steps=300)
    rng = np.random.default_rng(0)
    d = rng.standard_normal(N)
    d /= np.linalg.norm(d)
    got = fidelity.score(theta, evaluate, worst, as_list(d))
    star = flat(worst.delta)
    base = loss_np(a, b, x0)
    assert got["cosine"] == pytest.approx(d @ star / np.linalg.norm(star), abs=1e-12)
    assert got["loss"] == pytest.approx(loss_np(a, b, x0 + r * d), abs=1e-12)
    assert got["fraction"] == pytest.approx((loss_np(a, b, x0 + r * d) - base)
                                            / (worst.loss - base), abs=1e-10)
    best = fidelity.score(theta, evaluate, worst, as_list(star / np.linalg.norm(star)))
    assert best["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert best["fraction"] == pytest.approx(1.0, abs=1e-9)
    assert np.array_equal(flat(theta), x0)


# --------------------------------------------------------------------------- xsam-fidelity
def test_xsam_fidelity_measures_and_summarizes_a_fairseq_checkpoint(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from fairseq_helpers import TINY_ARCH, make_corpus

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    data = make_corpus(str(tmp_path), n_train=120, n_valid=10)
    save = tmp_path / "run" / "checkpoints"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    train = subprocess.run(
        [sys.executable, "-m", "fairseq_cli.train", data, "--user-dir",
         os.path.join(root, "fairseq_xsam"), "--task", "translation", "--cpu", *TINY_ARCH,
         "--optimizer", "xsam_adamw", "--rho", "0.1", "--probe-rho", "0.3", "--lr", "2e-3",
         "--dropout", "0.1", "--criterion", "label_smoothed_cross_entropy",
         "--label-smoothing", "0.1", "--max-tokens", "300", "--max-epoch", "2", "--seed", "3",
         "--save-dir", str(save), "--no-progress-bar", "--num-workers", "0"],
        capture_output=True, text=True, env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    tool = os.path.join(os.path.dirname(sys.executable), "xsam-fidelity")
    out = tmp_path / "fidelity"
    run = subprocess.run(
        [tool, "measure", str(save / "checkpoint1.pt"), str(save / "checkpoint2.pt"),
         "--data", data, "--out", str(out), "--cpu", "--batches", "3", "--max-tokens", "300",
         "--radii", "0.3,0.1", "--starts", "2", "--steps", "4", "--rho", "0.1",
         "--probe-rho", "0.3"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads((out / f"run-epoch{e}.json").read_text()) for e in (1, 2)]
    for rec in records:
        assert len(rec["batches"]) == 3 and rec["settings"]["radii"] == [0.3, 0.1]
        alphas = [b["alpha"]["xsam"] for b in rec["batches"]]
        # each batch borrows the α its predecessor searched (an epoch-wise search's situation)
        assert [b["alpha_other"] for b in rec["batches"]][1:] == alphas[:-1]
        for b in rec["batches"]:
            assert b["alpha"]["xsam_other"] == b["alpha_other"]
            for r, res in b["radii"].items():
                worst = res["worst"]
                assert worst["loss"] == max(s["loss"] for s in worst["starts"])
                assert worst["rise"] == pytest.approx(worst["loss"] - b["base_loss"])
                dirs = res["directions"]
                assert set(dirs) == {"sgd", "sam_k1", "sam_k3", "xsam", "xsam_auto",
                                     "xsam_other"}
                assert all(-1 - 1e-9 <= d["cosine"] <= 1 + 1e-9 for d in dirs.values())
                # the first start is SGD's point and the ascent only accepts rises
                assert dirs["sgd"]["loss"] <= worst["loss"]
                assert dirs["sgd"]["fraction"] <= 1 + 1e-9
        summary = rec["summary"]["0.3"]["xsam"]["cosine"]
        values = [b["radii"]["0.3"]["directions"]["xsam"]["cosine"] for b in rec["batches"]]
        assert summary["mean"] == pytest.approx(sum(values) / 3) and summary["n"] == 3
    assert [r["epoch"] for r in records] == [1, 2]
    summ = subprocess.run([tool, "summarize", *map(str, sorted(out.glob("*.json"))), "--out",
                           str(tmp_path / "summary.json"), "--plot", str(tmp_path / "f.png")],
                          capture_output=True, text=True, env=env)
    assert summ.returncode == 0, summ.stderr[-3000:]
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads((tmp_path / "summary.json").read_text())
    assert [t["label"] for t in table] == ["run-epoch1", "run-epoch2"]
    bad = subprocess.run([tool, "measure", str(save / "checkpoint1.pt"), "--out", str(out),
                          "--radii", "0.3,-1"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "invalid --radii value: '0.3,-1'" in bad.stderr
