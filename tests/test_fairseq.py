"""``--optimizer xsam_adamw`` inside fairseq's real Trainer, on tiny generated data (CPU)."""

import copy
import math

import pytest
import torch

from fairseq_helpers import batches, build_trainer, flat_params, make_corpus


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


def close(a, b, rel=1e-5):
    """‖a − b‖ ≤ rel·‖b‖: float32 round-off, measured on the whole vector."""
    return float((a - b).norm()) <= rel * float(b.norm())


def descent_grad(trainer):
    inner = trainer.optimizer
    params = inner.fp32_optimizer.params if hasattr(inner, "fp32_optimizer") else inner.params
    return torch.cat([p.grad.reshape(-1).double() for p in params])


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


def test_update_freq_two_equals_update_freq_one_on_the_same_sentences(data):
    opts = ["--optimizer", "xsam_adamw", "--alpha-search", "1", "--rho", "0.3"]
    _, task, one = build_trainer(data, opts)
    _, _, two = build_trainer(data, opts + ["--update-freq", "2"])
    halves = batches(task, one, 4, 2)
    ds = task.dataset("train")
    ids = torch.cat([h["id"] for h in halves]).tolist()
    whole = ds.collater([ds[i] for i in ids])
    probes, start = {}, flat_params(one.model)
    assert torch.equal(start, flat_params(two.model))
    for name, trainer, samples in (("one", one, [whole]), ("two", two, halves)):
        _ = trainer.optimizer  # builds the optimizer (attaches the glue)
        glue = trainer._xsam_glue
        original = glue.xsam.sharpness_gradient

        def spy(*a, _name=name, _orig=original, **k):
            info = _orig(*a, **k)
            probes[_name] = info
            return info

        glue.xsam.sharpness_gradient = spy
        trainer.train_step(samples)
    assert probes["one"].searched and probes["two"].searched
    assert probes["one"].alpha == probes["two"].alpha
    assert torch.allclose(probes["one"].probe_losses, probes["two"].probe_losses, rtol=1e-5)
    assert close(descent_grad(one), descent_grad(two))
    # AdamW's first step is lr·g/(|g|+ε): where |g| ~ ε it magnifies round-off, so compare the
    # updates as vectors
    assert close(flat_params(two.model) - start, flat_params(one.model) - start, 1e-3)


@pytest.mark.parametrize("variant", ["xsam", "fixed", "sam", "msam", "msam+", "lsam", "lsam+"])
def test_every_variant_trains_and_its_loss_falls(data, variant):
    extra = ["--optimizer", "xsam_adamw", "--sam-variant", variant, "--lr", "3e-3",
             "--adam-betas", "(0.9,0.98)", "--weight-decay", "1e-4"]
    if variant in ("msam", "msam+", "lsam", "lsam+"):
        extra += ["--ascent-steps", "2"]
    if variant == "xsam":
        extra += ["--alpha-search", "4", "--adaptive"]
    if variant == "fixed":
        extra += ["--alpha", "0.5"]
    _, task, trainer = build_trainer(data, extra)
    samples = batches(task, trainer, 50, 4)
    losses = []
    for epoch in range(6):
        for s in samples:
            out = trainer.train_step([s])
            losses.append(out["loss"])
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert all(math.isfinite(x) for x in losses)
    assert last < first - 0.3, (first, last)


def test_amp_on_cpu_matches_fp32(data):
    """--amp runs on CPU (no loss scaler there): the glue's amp path must equal fp32."""
    grads = {}
    for name, extra in (("fp32", []), ("amp", ["--amp"])):
        _, task, trainer = build_trainer(data, ["--optimizer", "xsam_adamw", "--alpha-search",
                                                "1", *extra])
        trainer.train_step(batches(task, trainer, 8, 1))
        grads[name] = (descent_grad(trainer), flat_params(trainer.model))
    assert close(grads["amp"][0], grads["fp32"][0], 1e-6)
    assert torch.equal(grads["amp"][1], grads["fp32"][1])


def test_fp16_master_weights_match_fp32(data):
    """--fp16 (FP16Optimizer, fp32 master copy, loss scale): the glue ascends on what the fp16
    model reads and restores it from the master copy. CPU cannot build the flat master tensor
    (fairseq asks CUDA for its device), so this runs the per-parameter layout."""
    got = {}
    for name, extra in (("fp32", []), ("fp16", ["--fp16", "--fp16-no-flatten-grads",
                                                "--fp16-init-scale", "64"])):
        _, task, trainer = build_trainer(data, ["--optimizer", "xsam_adamw", "--alpha-search",
                                                "1", *extra])
        trainer.train_step(batches(task, trainer, 8, 1))
        got[name] = (descent_grad(trainer), trainer._xsam_glue.xsam.alpha, trainer)
    assert got["fp16"][1] == got["fp32"][1]
    assert close(got["fp16"][0], got["fp32"][0], 1e-2)  # fp16 arithmetic in the passes
    fp16 = got["fp16"][2]
    masters = fp16.optimizer.fp32_optimizer.params
    halves = [p for p in fp16.model.parameters() if p.requires_grad]
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


def test_task_overriding_train_step_is_refused(data):
    from fairseq.tasks.translation import TranslationTask

    class Custom(TranslationTask):
        def train_step(self, *args, **kwargs):
            return super().train_step(*args, **kwargs)

    cfg, task, trainer = build_trainer(data, ["--optimizer", "xsam_adamw"])
    task.__class__ = Custom
    with pytest.raises(ValueError, match="overrides train_step"):
        _ = trainer.optimizer


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
