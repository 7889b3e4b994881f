"""``--optimizer xsam_adamw`` inside fairseq's real Trainer, on tiny generated data (CPU)."""

import copy
import math

import pytest
import torch
from fairseq_helpers import batches, build_trainer, close, descent_grad, flat_params, make_corpus


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("corpus")))


def loss_fn(model, criterion, samples):
    """The update's loss L(θ) exactly as fairseq normalises it: Σ loss / Σ sample_size."""
    total, size = 0.0, 0
    for s in samples:
        loss, sample_size, _ = criterion(model, s)
        total, size = total + loss, size + sample_size
    return total / size


def reference_descent(model, criterion, samples, rho, alpha):
    """XSAM's descent gradient for k = 1 computed by hand in float64 arithmetic on the vectors."""
    params = [p for p in model.parameters() if p.requires_grad]

    def grad():
        g = torch.autograd.grad(loss_fn(model, criterion, samples), params, allow_unused=True)
        return torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                          for x, p in zip(g, params)]).double()

    g0 = grad()
    eps = rho * g0 / g0.norm()
    with torch.no_grad():
        offset = 0
        for p in params:
            p.add_(eps[offset:offset + p.numel()].view_as(p).to(p.dtype))
            offset += p.numel()
    g1 = grad()
    u, v = g0 / g0.norm(), g1 / g1.norm()
    phi = torch.arccos(torch.clamp(u @ v, -1, 1))
    d = (torch.sin((1 - alpha) * phi) * u + torch.sin(alpha * phi) * v) / torch.sin(phi)
    return g1.norm() * d, g1


@pytest.mark.parametrize("variant,alpha", [("fixed", 0.6), ("fixed", 1.7), ("sam", 1.0)])
def test_trainer_descent_gradient_and_step_match_hand_computation(data, variant, alpha):
    cfg, task, trainer = build_trainer(data, ["--optimizer", "xsam_adamw", "--rho", "0.3",
                                              "--sam-variant", variant, "--alpha", str(alpha),
                                              "--weight-decay", "0.01"])
    samples = batches(task, trainer, 8, 1)
    model0 = copy.deepcopy(trainer.model)
    expected, g1 = reference_descent(copy.deepcopy(trainer.model), trainer.criterion, samples,
                                     0.3, alpha if variant == "fixed" else 1.0)
    trainer.train_step(samples)
    got = descent_grad(trainer)
    assert close(got, g1 if variant == "sam" else expected)

    # θ was restored before AdamW stepped: the result is fairseq's AdamW on the descent gradient
    from fairseq.optim.adam import Adam

    ref_params = [p for p in model0.parameters() if p.requires_grad]
    offset = 0
    for p in ref_params:
        p.grad = got[offset:offset + p.numel()].view_as(p).float()
        offset += p.numel()
    Adam(ref_params, lr=1e-3, weight_decay=0.01).step()
    assert torch.allclose(flat_params(trainer.model), flat_params(model0), rtol=0, atol=1e-7)


def reference_probes(model, criterion, samples, rho, probe_rho, grid):
    """The probe losses L(θ + ρ'·d(α)) of a k = 1 search, written from ALGORITHM.md with autograd
    and float64 vectors on the update's sentences (``samples``, summed as fairseq normalises
    them): u = g_0/‖g_0‖, v = g_1/‖g_1‖ at θ_1 = θ + ρ·u, φ = arccos⟨u, v⟩,
    d(α) = [sin((1−α)φ)·u + sin(αφ)·v]/sin φ. ``model`` is left at θ."""
    params = [p for p in model.parameters() if p.requires_grad]
    theta = torch.cat([p.detach().reshape(-1) for p in params]).double()

    def put(vector):
        with torch.no_grad():
            offset = 0
            for p in params:
                p.copy_(vector[offset:offset + p.numel()].view_as(p).to(p.dtype))
                offset += p.numel()

    def grad_at(vector):
        put(vector)
        g = torch.autograd.grad(loss_fn(model, criterion, samples), params, allow_unused=True)
        return torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                          for x, p in zip(g, params)]).double()

    g0 = grad_at(theta)
    u = g0 / g0.norm()
    g1 = grad_at(theta + rho * u)
    v = g1 / g1.norm()
    phi = torch.arccos(torch.clamp(u @ v, -1, 1))
    losses = []
    with torch.no_grad():
        for a in grid:
            d = (torch.sin((1 - a) * phi) * u + torch.sin(a * phi) * v) / torch.sin(phi)
            put(theta + probe_rho * d)
            losses.append(float(loss_fn(model, criterion, samples)))
    put(theta)
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("n", [2, 3])
def test_update_freq_n_equals_one_big_batch_and_probes_the_moved_weights(data, n):
    """Two updates, a search on each: --update-freq N (N micro-batches) and one batch of the same
    sentences give the same probe losses, α, descent gradient and step; and the probe losses are
    L(θ + ρ'·d(α)) on the update's sentences and the descent gradient ‖g_1‖·d(α*), computed
    independently (reference_probes, reference_descent)."""
    opts = ["--optimizer", "xsam_adamw", "--alpha-search", "1", "--rho", "0.3"]
    _, task, one = build_trainer(data, opts)
    _, _, many = build_trainer(data, opts + ["--update-freq", str(n)])
    micro = batches(task, one, 4, 2 * n)
    ds = task.dataset("train")
    grid = [round(0.1 * i, 12) for i in range(21)]
    seen = {"one": [], "many": []}
    for name, trainer in (("one", one), ("many", many)):
        _ = trainer.optimizer  # builds the optimizer (attaches the glue)
        xsam = trainer._xsam_glue.xsam
        xsam.sharpness_gradient = (lambda *a, _seen=seen[name], _orig=xsam.sharpness_gradient,
                                   **k: _seen.append(_orig(*a, **k)) or _seen[-1])
    assert torch.equal(flat_params(one.model), flat_params(many.model))
    for update in range(2):
        samples = micro[update * n:(update + 1) * n]
        whole = ds.collater([ds[i] for i in torch.cat([s["id"] for s in samples]).tolist()])
        start, before = flat_params(many.model), copy.deepcopy(many.model)
        expected = reference_probes(copy.deepcopy(before), many.criterion, samples, 0.3, 0.45,
                                    grid)
        best = max(range(len(grid)), key=lambda i: (float(expected[i]), -i))
        descent, _ = reference_descent(before, many.criterion, samples, 0.3, grid[best])
        one.train_step([whole])
        many.train_step(samples)
        got_one, got_many = seen["one"][update], seen["many"][update]
        assert got_many.searched and got_many.probe_alphas == grid
        # the searched losses are the batch loss on the moved weights (float32 model)
        assert torch.allclose(got_many.probe_losses.double(), expected, rtol=1e-5, atol=0), (
            got_many.probe_losses, expected)
        assert got_many.alpha == grid[best] and 0.0 < got_many.alpha < 2.0  # α inside the grid
        assert got_one.alpha == got_many.alpha
        assert torch.allclose(got_one.probe_losses, got_many.probe_losses, rtol=1e-5)
        assert close(descent_grad(many), descent)  # ‖g_1‖·d(α*), by hand
        assert close(descent_grad(one), descent_grad(many))
        # AdamW's step is about lr·m/(√v+ε): where |g| ~ ε it magnifies round-off (and its state
        # carries the first update's into the second), so compare the updates as vectors
        step_many, step_one = flat_params(many.model) - start, flat_params(one.model) - start
        assert close(step_many, step_one, 1e-3 if update == 0 else 1e-2)


SMOKE_OPTS = ["--lr", "3e-3", "--adam-betas", "(0.9,0.98)", "--weight-decay", "1e-4"]


def train_smoke(data, opts):
    """24 updates (6 passes over 4 batches of 50 sentences): the losses and the final weights."""
    _, task, trainer = build_trainer(data, opts + SMOKE_OPTS)
    samples = batches(task, trainer, 50, 4)
    losses = [trainer.train_step([s])["loss"] for _ in range(6) for s in samples]
    return losses, flat_params(trainer.model)


@pytest.fixture(scope="module")
def adamw_smoke(data):
    return train_smoke(data, ["--optimizer", "adam"])


@pytest.mark.parametrize("variant", ["xsam", "fixed", "sam", "msam", "msam+", "lsam", "lsam+"])
def test_smoke_every_variant_trains_in_the_trainer_and_is_not_plain_adamw(data, adamw_smoke,
                                                                          variant):
    """A smoke test: each variant runs 24 updates in fairseq's trainer with finite, falling losses
    (plain AdamW does too: the descent gradients are checked against references in
    test_trainer_descent_gradient_and_step_match_hand_computation and test_equivalence), and its
    weights end elsewhere than AdamW's from the same start on the same batches."""
    extra = ["--optimizer", "xsam_adamw", "--sam-variant", variant]
    if variant in ("msam", "msam+", "lsam", "lsam+"):
        extra += ["--ascent-steps", "2"]
    if variant == "xsam":
        extra += ["--alpha-search", "4", "--adaptive"]
    if variant == "fixed":
        extra += ["--alpha", "0.5"]
    losses, final = train_smoke(data, extra)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert all(math.isfinite(x) for x in losses)
    assert last < first - 0.3, (first, last)
    adamw = adamw_smoke[1]
    assert float((final - adamw).norm()) > 1e-3 * float(adamw.norm())


# --amp is tested where its loss scaler is live (a CPU GradScaler at 2^10, and on CUDA):
# tests/fairseq/test_gpu_path.py, test_amp_with_a_live_loss_scale_matches_fp32 and
# test_without_the_glue_fix_fairseq_unscales_amp_gradients_twice. On CPU fairseq's own --amp
# runs with a disabled scaler and no autocast, i.e. fp32: a comparison there exercises nothing.


def test_fp16_master_weights_match_fp32(data):
    """--fp16 (FP16Optimizer, fp32 master copy, loss scale): the glue ascends on what the fp16
    model reads and restores it from the master copy. CPU cannot build the flat master tensor
    (fairseq asks CUDA for its device), so this runs the per-parameter layout. At ρ = 0.3 the
    maximum is inside the grid (α* = 1.2), so "the same α* as fp32" can fail: at the default ρ
    both searches would sit at the grid's edge (2.0) whatever fp16 did to the probes."""
    got = {}
    for name, extra in (("fp32", []), ("fp16", ["--fp16", "--fp16-no-flatten-grads",
                                                "--fp16-init-scale", "64"])):
        _, task, trainer = build_trainer(data, ["--optimizer", "xsam_adamw", "--alpha-search",
                                                "1", "--rho", "0.3", *extra])
        _ = trainer.optimizer
        infos, xsam = [], trainer._xsam_glue.xsam
        xsam.sharpness_gradient = (lambda *a, _i=infos, _o=xsam.sharpness_gradient, **k:
                                   _i.append(_o(*a, **k)) or _i[-1])
        trainer.train_step(batches(task, trainer, 8, 1))
        got[name] = (descent_grad(trainer), infos[0], trainer)
    fp32, fp16 = got["fp32"][1], got["fp16"][1]
    assert 0.0 < fp32.alpha < 2.0 and not fp32.at_edge  # an interior maximum
    assert fp16.alpha == fp32.alpha
    # the whole probe curve, not only its argmax (fp16 arithmetic in the passes)
    assert torch.allclose(fp16.probe_losses.float(), fp32.probe_losses.float(), rtol=1e-2)
    assert close(got["fp16"][0], got["fp32"][0], 1e-2)  # fp16 arithmetic in the passes
    trainer = got["fp16"][2]
    masters = trainer.optimizer.fp32_optimizer.params
    halves = [p for p in trainer.model.parameters() if p.requires_grad]
    assert all(h.dtype == torch.float16 for h in halves)
    assert all(torch.equal(h, m.half()) for h, m in zip(halves, masters))  # refreshed after step


def test_clip_norm_applies_to_the_descent_gradient(data):
    grads = {}
    for clip in ("0", "1e-3"):
        _, task, trainer = build_trainer(data, ["--optimizer", "xsam_adamw", "--clip-norm", clip,
                                                "--sam-variant", "fixed", "--alpha", "1.5"])
        trainer.train_step(batches(task, trainer, 8, 1))
        grads[clip] = descent_grad(trainer)
    unclipped = grads["0"]
    assert float(unclipped.norm()) > 1e-2  # so the clip really acts
    assert close(grads["1e-3"], unclipped * (1e-3 / unclipped.norm()), 1e-5)


def test_task_overriding_train_step_is_replayed_through_its_own_train_step(data):
    """A task with its own train_step (keeping its contract) trains: every pass, probes
    included, goes through it (the probes forward-only); tests/fairseq/test_tasks.py checks the real
    fairseq tasks that do this."""
    from fairseq.tasks.translation import TranslationTask

    calls = []

    class Custom(TranslationTask):
        def train_step(self, sample, model, criterion, optimizer, *args, **kwargs):
            calls.append(type(optimizer).__name__)
            return super().train_step(sample, model, criterion, optimizer, *args, **kwargs)

    cfg, task, trainer = build_trainer(data, ["--optimizer", "xsam_adamw", "--alpha-search",
                                              "1"])
    task.__class__ = Custom
    trainer.train_step(batches(task, trainer, 8, 1))
    # the trainer's pass and the ascent pass get the optimizer; the 21 probes a stand-in
    assert len(calls) == 2 + 21
    assert calls[2:] == ["ForwardOnlyXSAMAdamW"] * 21 and "ForwardOnly" not in calls[0]


def test_memory_efficient_fp16_is_refused(data):
    cfg, task, trainer = build_trainer(data, ["--optimizer", "xsam_adamw", "--fp16",
                                              "--memory-efficient-fp16"])
    with pytest.raises(ValueError, match="--memory-efficient-fp16 is not supported"):
        _ = trainer.optimizer


def test_other_optimizers_are_untouched(data):
    _, task, trainer = build_trainer(data, ["--optimizer", "adam"])
    _ = trainer.optimizer
    assert not hasattr(trainer, "_xsam_glue") and "clip_grad_norm" not in vars(trainer)


def test_resume_takes_xsam_options_from_the_command_line(data):
    _, task, trainer = build_trainer(data, ["--optimizer", "xsam_adamw", "--rho", "0.1",
                                            "--sam-variant", "fixed", "--alpha", "0.3"])
    trainer.train_step(batches(task, trainer, 8, 1))
    saved = trainer.optimizer.state_dict()
    _, _, other = build_trainer(data, ["--optimizer", "xsam_adamw", "--rho", "0.2",
                                       "--sam-variant", "fixed", "--alpha", "0.7"])
    other.optimizer.load_state_dict(saved)
    xsam = other._xsam_glue.xsam
    assert xsam.param_groups[0]["rho"] == 0.2 and xsam.alpha == 0.7
    assert xsam.search_state["step"] == 1
