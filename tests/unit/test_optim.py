"""The plain-PyTorch ``XSAM`` class: contract, invariants, saving, errors, the 2-D behaviour."""

import copy

import pytest
import torch
from quadratics import closed_form_alpha, plane_quadratic

from fairseq_xsam import XSAM
from fairseq_xsam.toy import basin, trajectory
from fairseq_xsam.toy import loss as toy_loss


def make_problem(seed=0, dropout=0.0):
    """A small regression model and its closure; ``closure_for`` makes one for a copy."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Dropout(dropout),
                                torch.nn.Linear(16, 1)).double()
    x = torch.randn(64, 5, dtype=torch.float64)
    y = torch.randn(64, 1, dtype=torch.float64)
    closure_for = lambda m: (lambda: ((m(x) - y) ** 2).mean())  # noqa: E731
    make_problem.closure_for = closure_for
    return model, closure_for(model)


def params_of(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_fixed_alpha_one_equals_an_independent_sam_step():
    model, closure = make_problem()
    ref = copy.deepcopy(model)
    ref_closure = make_problem.closure_for(ref)
    opt = XSAM(model.parameters(), torch.optim.SGD, rho=0.2, sam_variant="fixed", alpha=1.0,
               lr=0.1)
    opt.step(closure)

    # SAM written out by hand (Foret et al.): ε = ρ g/‖g‖, then descend with ∇L(θ + ε)
    params = list(ref.parameters())
    grads = torch.autograd.grad(ref_closure(), params)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    with torch.no_grad():
        eps = [0.2 * g / norm for g in grads]
        for p, e in zip(params, eps):
            p.add_(e)
    grads1 = torch.autograd.grad(ref_closure(), params)
    with torch.no_grad():
        for p, e, g in zip(params, eps, grads1):
            p.sub_(e).sub_(0.1 * g)
    assert torch.allclose(params_of(model), params_of(ref), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("variant", ["xsam", "sam", "msam+", "lsam"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_tiny_rho_equals_the_base_optimizer_step_for_step(variant, dropout):
    model, closure = make_problem(dropout=dropout)
    base_model = copy.deepcopy(model)
    base_closure = make_problem.closure_for(base_model)
    kw = dict(lr=0.01, weight_decay=0.1)
    opt = XSAM(model.parameters(), torch.optim.AdamW, rho=1e-9, sam_variant=variant, **kw)
    base = torch.optim.AdamW(base_model.parameters(), **kw)
    torch.manual_seed(123)
    for _ in range(5):
        opt.step(closure)
    torch.manual_seed(123)
    for _ in range(5):  # dropout draws the same masks: XSAM leaves the random stream as it was
        base.zero_grad()
        base_closure().backward()
        base.step()
    assert torch.allclose(params_of(model), params_of(base_model), rtol=1e-6, atol=1e-8)


def test_closure_call_pattern_and_probe_mode():
    model, closure = make_problem()
    calls = []

    def counting():
        calls.append(torch.is_grad_enabled())
        return closure()

    opt = XSAM(model.parameters(), torch.optim.SGD, ascent_steps=2, alpha_step=0.5, lr=0.1)
    opt.step(counting)  # a search step: 3 gradient evaluations, then 5 probes without grad
    assert calls == [True, True, True] + [False] * 5
    calls.clear()
    opt = XSAM(model.parameters(), torch.optim.SGD, alpha_search=0, lr=0.1)
    opt.step(counting)
    assert calls == [True, True]


def test_search_schedule_every_n_and_epoch():
    model, closure = make_problem()
    opt = XSAM(model.parameters(), torch.optim.SGD, alpha_search=3, lr=0.01)
    due = []
    for _ in range(7):
        due.append(opt.search_due())
        opt.step(closure)
    assert due == [True, False, False, True, False, False, True]  # steps 1, 4, 7

    opt = XSAM(model.parameters(), torch.optim.SGD, alpha_search="epoch", lr=0.01)
    pattern = []
    for epoch in (1, 2):
        opt.begin_epoch(epoch)
        for _ in range(3):
            pattern.append(opt.search_due())
            opt.step(closure)
    assert pattern == [True, False, False, True, False, False]
    assert XSAM(model.parameters(), torch.optim.SGD, sam_variant="fixed",
                lr=1).search_due() is False


def test_alpha_is_the_searched_value_and_persists():
    model, closure = make_problem()
    opt = XSAM(model.parameters(), torch.optim.SGD, alpha_search=2, alpha=0.0, lr=0.01)
    seen = []
    original = opt.sharpness_gradient

    def spy(*a, **k):
        info = original(*a, **k)
        seen.append(info)
        return info

    opt.sharpness_gradient = spy
    opt.step(closure)
    assert seen[0].searched and opt.alpha == seen[0].alpha
    searched_alpha = opt.alpha
    opt.step(closure)
    assert not seen[1].searched and opt.alpha == searched_alpha and seen[1].alpha == searched_alpha


def test_state_dict_round_trip_continues_exactly():
    model, closure = make_problem()
    opt = XSAM(model.parameters(), torch.optim.AdamW, alpha_search=3, lr=0.01)
    for _ in range(4):
        opt.step(closure)
    saved_model = copy.deepcopy(model.state_dict())
    saved = copy.deepcopy(opt.state_dict())
    assert saved["xsam"]["step"] == 4 and saved["xsam"]["alpha"] == opt.alpha
    assert saved["param_groups"][0]["rho"] == 0.15  # hyper-parameters are saved per group
    # no scratch buffer is saved: per parameter only AdamW's own state
    assert all(set(s) == {"step", "exp_avg", "exp_avg_sq"} for s in saved["state"].values())
    for _ in range(4):
        opt.step(closure)
    expected = params_of(model)

    model2, closure2 = make_problem()
    model2.load_state_dict(saved_model)
    opt2 = XSAM(model2.parameters(), torch.optim.AdamW, alpha_search=3, lr=0.01)
    opt2.load_state_dict(saved)
    assert opt2.alpha == saved["xsam"]["alpha"] and opt2.search_state["step"] == 4
    for _ in range(4):
        opt2.step(closure2)
    assert torch.equal(params_of(model2), expected)
    assert opt2.alpha == opt.alpha


def test_lr_scheduler_drives_the_base_optimizer():
    model, closure = make_problem()
    opt = XSAM(model.parameters(), torch.optim.SGD, sam_variant="sam", lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(closure)
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["lr"] == 0.5


def test_unused_and_zero_size_parameters():
    torch.manual_seed(0)
    used = torch.nn.Parameter(torch.randn(4))
    unused = torch.nn.Parameter(torch.randn(3))
    empty = torch.nn.Parameter(torch.zeros(0))
    before = unused.detach().clone()
    opt = XSAM([used, unused, empty], torch.optim.SGD, lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.step(lambda: (used ** 2).sum() + empty.sum())
    assert torch.equal(unused.detach(), before) and unused.grad is None
    assert torch.isfinite(used).all()


def test_zero_gradient_step_is_finite():
    p = torch.nn.Parameter(torch.ones(3))
    opt = XSAM([p], torch.optim.SGD, lr=0.1)
    opt.step(lambda: (p * 0).sum())
    assert torch.equal(p.detach(), torch.ones(3)) and torch.isfinite(p.grad).all()


def test_step_without_closure_is_an_error_not_a_plain_step():
    model, _ = make_problem()
    opt = XSAM(model.parameters(), torch.optim.SGD, lr=0.1)
    before = params_of(model)
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()
    assert torch.equal(params_of(model), before)


GOOD = [dict(), dict(sam_variant="fixed", alpha=0.5), dict(sam_variant="sam", ascent_steps=3),
        dict(sam_variant="lsam+", adaptive=True, asam_eta=0.0), dict(alpha_search="epoch"),
        dict(alpha_search=0, alpha=2.0), dict(alpha_max=1.0, alpha_step=1.0),
        dict(alpha_max="auto"), dict(alpha_max=" Auto ", alpha=6.0),
        dict(alpha_max="auto", alpha_step=0.25, alpha_expand_probes=2, alpha=2.5),
        dict(alpha_max="3", alpha=3.0)]

BAD = [
    (dict(rho=0.0), "Invalid rho value: 0.0 (allowed: rho > 0)"),
    (dict(rho=-1), "Invalid rho value"),
    (dict(probe_rho=0), "Invalid probe_rho value"),
    (dict(ascent_steps=0), "Invalid ascent_steps value: 0 (allowed: an integer >= 1)"),
    (dict(ascent_steps=1.5), "Invalid ascent_steps"),
    (dict(sam_variant="gsam"), "Invalid sam_variant value: 'gsam' (allowed: xsam, fixed, sam"),
    (dict(alpha_step=0), "Invalid alpha_step value: 0"),
    (dict(alpha_step=3.0), "alpha_step <= alpha_max = 2.0"),
    (dict(alpha=2.5), "Invalid alpha value: 2.5 (allowed: 0 <= alpha <= alpha_max = 2.0)"),
    (dict(alpha_max=-1), "Invalid alpha_max value"),
    (dict(alpha_search=-2), "Invalid alpha_search value: -2"),
    (dict(alpha_search="weekly"), "Invalid alpha_search value: 'weekly'"),
    (dict(sam_variant="fixed", alpha_search=5), "only 'xsam' searches"),
    (dict(asam_eta=-0.1), "Invalid asam_eta value"),
    (dict(alpha_max="wide"), "Invalid alpha_max value: 'wide' (allowed: a number > 0, or 'auto')"),
    (dict(alpha_max=float("inf")), "Invalid alpha_max value: inf"),
    (dict(alpha_max=True), "Invalid alpha_max value: True"),
    (dict(alpha_max="auto", alpha_expand_probes=0),
     "Invalid alpha_expand_probes value: 0 (allowed: an integer >= 1)"),
    (dict(alpha_max="auto", alpha_expand_probes=2.5), "Invalid alpha_expand_probes value: 2.5"),
    (dict(alpha_max="auto", alpha_step=2.5),
     "Invalid alpha_step value: 2.5 (allowed: 0 < alpha_step <= 2.0, the grid of alpha_max auto)"),
    (dict(alpha_max="auto", alpha=6.5),
     "Invalid alpha value: 6.5 (allowed: 0 <= alpha <= 6 = 2 + alpha_expand_probes x alpha_step "
     "with alpha_max auto)"),
]


@pytest.mark.parametrize("kwargs", GOOD)
def test_valid_configurations_construct_and_step(kwargs):
    model, closure = make_problem()
    opt = XSAM(model.parameters(), torch.optim.SGD, lr=0.01, **kwargs)
    opt.step(closure)
    assert torch.isfinite(params_of(model)).all()


@pytest.mark.parametrize("kwargs,message", BAD)
def test_invalid_configurations_fail_with_one_line(kwargs, message):
    model, _ = make_problem()
    with pytest.raises(ValueError) as err:
        XSAM(model.parameters(), torch.optim.SGD, lr=0.01, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_param_groups_must_agree_on_xsam_settings():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = XSAM([{"params": [a]}, {"params": [b], "rho": 0.5}], torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="rho=0.5 differs"):
        opt.step(lambda: (a ** 2).sum() + (b ** 2).sum())
    assert torch.equal(a.detach(), torch.ones(2))


def test_two_d_function_xsam_finds_the_flat_minimum():
    """Paper Sec. 5.1: from near the sharp minimum, SGD and SAM stay, XSAM reaches the flat one."""
    start, steps, lr, rho = [-15.0, 10.0], 800, 100.0, 8.0
    sgd = trajectory(lambda p: torch.optim.SGD(p, lr=lr), start, steps)
    sam = trajectory(lambda p: XSAM(p, torch.optim.SGD, rho=rho, sam_variant="sam", lr=lr),
                     start, steps)
    xsam = trajectory(lambda p: XSAM(p, torch.optim.SGD, rho=rho, probe_rho=3 * rho,
                                     alpha_search=1, lr=lr), start, steps)
    assert basin(sgd[-1]) == "sharp" and basin(sam[-1]) == "sharp"
    assert basin(xsam[-1]) == "flat"
    assert float(xsam[-1][0]) > 0.0 > float(sam[-1][0])
    assert all(torch.isfinite(toy_loss(p)) for p in (sgd[-1], sam[-1], xsam[-1]))


# -- the α search's edge and alpha_max='auto' through the class ------------------------------------

def quadratic_problem(p=1.0, a=0.5, c=1.0, rho=0.17):
    """The quadratic of quadratics.py whose probe-circle maximum is known in closed form."""
    A, b, theta0, phi = plane_quadratic(p, a, c, rho)
    theta = torch.nn.Parameter(theta0.clone())
    return theta, (lambda: 0.5 * theta @ A @ theta + b @ theta), phi


def test_auto_finds_the_closed_form_alpha_and_the_default_grid_warns_once(caplog):
    probe_rho = 1.0
    expected = closed_form_alpha(1.0, 1.0, probe_rho, quadratic_problem()[2])  # 3.37
    theta, closure, _ = quadratic_problem()
    auto = XSAM([theta], torch.optim.SGD, rho=0.17, probe_rho=probe_rho, alpha_max="auto",
                alpha_search=1, lr=0.0)
    infos = []
    original = auto.sharpness_gradient
    auto.sharpness_gradient = lambda *a, **k: infos.append(original(*a, **k)) or infos[-1]
    with caplog.at_level("WARNING", logger="fairseq_xsam.optim"):
        auto.step(closure)
    assert abs(auto.alpha - expected) < 0.1 and not infos[0].at_edge and not caplog.records
    assert auto.param_groups[0]["alpha_max"] == "auto"

    theta, closure, _ = quadratic_problem()
    fixed = XSAM([theta], torch.optim.SGD, rho=0.17, probe_rho=probe_rho, alpha_search=1,
                 lr=0.0)
    infos.clear()
    original = fixed.sharpness_gradient
    fixed.sharpness_gradient = lambda *a, **k: infos.append(original(*a, **k)) or infos[-1]
    with caplog.at_level("WARNING", logger="fairseq_xsam.optim"):
        for _ in range(3):
            fixed.step(closure)
    assert fixed.alpha == 2.0 and [i.at_edge for i in infos] == [True] * 3
    assert [i.edge for i in infos] == ["grid"] * 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings  # once per run
    assert "alpha=2" in warnings[0] and "alpha_max auto" in warnings[0]
    assert "--" not in warnings[0] and "probe_rho" in warnings[0]


def test_auto_out_of_probes_names_the_budget_option(caplog):
    theta, closure, _ = quadratic_problem()
    opt = XSAM([theta], torch.optim.SGD, rho=0.17, probe_rho=1.0, alpha_max="auto",
               alpha_expand_probes=5, alpha_search=1, lr=0.0)
    with caplog.at_level("WARNING", logger="fairseq_xsam.optim"):
        opt.step(closure)
    assert opt.alpha == 2.5
    assert len(caplog.records) == 1
    assert "raise alpha_expand_probes" in caplog.records[0].getMessage()


def test_auto_state_dict_round_trip_and_a_state_dict_saved_before_auto_existed():
    model, closure = make_problem()
    opt = XSAM(model.parameters(), torch.optim.AdamW, alpha_max="auto", alpha_expand_probes=7,
               alpha_search=2, lr=0.01)
    for _ in range(3):
        opt.step(closure)
    saved = copy.deepcopy(opt.state_dict())
    assert saved["param_groups"][0]["alpha_max"] == "auto"
    assert saved["param_groups"][0]["alpha_expand_probes"] == 7
    model2, _ = make_problem()
    opt2 = XSAM(model2.parameters(), torch.optim.AdamW, alpha_search=2, lr=0.01)
    opt2.load_state_dict(saved)  # like torch: the saved groups' settings come back
    assert opt2.hyper["alpha_max"] == "auto" and opt2.hyper["alpha_expand_probes"] == 7

    # a state dict from before alpha_expand_probes existed: its groups lack the key
    old = copy.deepcopy(saved)
    for group in old["param_groups"]:
        group["alpha_max"] = 2.0
        del group["alpha_expand_probes"]
    model3, closure3 = make_problem()
    opt3 = XSAM(model3.parameters(), torch.optim.AdamW, alpha_search=2, lr=0.01)
    opt3.load_state_dict(old)
    assert opt3.hyper["alpha_expand_probes"] == 40 and opt3.alpha == saved["xsam"]["alpha"]
    opt3.step(closure3)
    assert opt3.search_state["step"] == 4 and torch.isfinite(params_of(model3)).all()


# -- the options' names and defaults (fairseq_xsam.settings.OPTIONS) ------------------------------

def test_defaults_are_the_papers_iwslt14_values_and_xsam_adamws():
    """rho 0.15 and probe_rho 0.45 (Chen & Zhou, appendix D.3), as --optimizer xsam_adamw; an
    unset alpha_search searches every step for xsam (fairseq: every epoch), never otherwise."""
    model, _ = make_problem()
    hyper = XSAM(model.parameters(), torch.optim.SGD, lr=0.1).hyper
    assert hyper == {"rho": 0.15, "probe_rho": 0.45, "ascent_steps": 1, "sam_variant": "xsam",
                     "alpha_max": 2.0, "alpha_step": 0.1, "alpha_expand_probes": 40,
                     "alpha_search": 1, "adaptive": False, "asam_eta": 0.01}
    assert XSAM(model.parameters(), torch.optim.SGD, sam_variant="sam",
                lr=0.1).hyper["alpha_search"] == 0


def test_options_are_keyword_only():
    model, _ = make_problem()
    with pytest.raises(TypeError):
        XSAM(model.parameters(), torch.optim.SGD, 0.05)


def test_earlier_keywords_still_work_with_a_deprecation_warning():
    """variant and search_every are now sam_variant and alpha_search (fairseq's names); the old
    keywords give the same optimizer, with a DeprecationWarning naming the new one."""
    model, closure = make_problem()
    new = XSAM(model.parameters(), torch.optim.SGD, sam_variant="xsam", alpha_search=3, lr=0.01)
    with pytest.warns(DeprecationWarning, match=r"XSAM\(variant=...\) is now XSAM\(sam_variant"):
        with pytest.warns(DeprecationWarning, match="alpha_search"):
            old = XSAM(model.parameters(), torch.optim.SGD, variant="xsam", search_every=3,
                       lr=0.01)
    assert old.hyper == new.hyper and old.hyper["alpha_search"] == 3
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError,
                                                         match="Invalid sam_variant value"):
        XSAM(model.parameters(), torch.optim.SGD, variant="gsam", lr=0.01)
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="both variant and"):
        XSAM(model.parameters(), torch.optim.SGD, variant="sam", sam_variant="fixed", lr=0.01)


def test_a_state_dict_saved_under_the_earlier_keywords_loads_under_the_new_names():
    model, closure = make_problem()
    opt = XSAM(model.parameters(), torch.optim.AdamW, sam_variant="fixed", alpha=0.5,
               alpha_search=0, lr=0.01)
    opt.step(closure)
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:  # as the earlier version saved its groups
        group["variant"], group["search_every"] = group.pop("sam_variant"), group.pop(
            "alpha_search")
    model2, closure2 = make_problem()
    opt2 = XSAM(model2.parameters(), torch.optim.AdamW, lr=0.01)  # xsam, searching: overridden
    opt2.load_state_dict(saved)
    assert opt2.hyper["sam_variant"] == "fixed" and opt2.hyper["alpha_search"] == 0
    assert not any(k in g for g in opt2.param_groups for k in ("variant", "search_every"))
    assert opt2.search_due() is False
    opt2.step(closure2)
