"""The glue's GPU-only branches: on CPU, each through the smallest stand-in, and on a real GPU.

Every test runs twice: ``cpu`` (the stand-in named below) and ``cuda`` (marked ``cuda``, skipped
without a CUDA device; ``scripts/gpu_check.sh`` runs them with ``pytest -m cuda``).

CPU stand-ins:

* ``--fp16`` with fairseq's default layout, ONE flat fp32 master tensor: FP16Optimizer puts it on
  ``torch.cuda.current_device()``; the stand-in answers the CPU tensors' device index (None), so
  the flat tensor is built on the CPU; fairseq's overflow branch calls ``.cuda()`` on a scalar,
  which the stand-in makes return the tensor itself.
* ``--amp`` with a live loss scale: AMPOptimizer's ``torch.cuda.amp.GradScaler`` disables itself
  without CUDA; ``torch.amp.GradScaler("cpu")`` is put in its place (the same class: scaling,
  unscaling, inf checks and back-off run the same code).
* A CUDA generator and CUDA autocast: ``torch.cuda.is_available()`` answers True and torch.cuda's
  RNG functions act on a CPU ``torch.Generator``, which the criterion draws from as dropout does
  on a GPU. CUDA autocast is then really entered by fairseq and by the glue's probes (it changes
  no CPU operation, so it is observed with ``torch.is_autocast_enabled("cuda")``).
"""

import math

import pytest
import torch
from fairseq_helpers import batches, build_trainer, flat_params, make_corpus, poison

from fairseq_xsam.bench.precision import instrument

CUDA = pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                         reason="needs a CUDA GPU (scripts/gpu_check.sh)")])
DEVICES = ["cpu", CUDA]
XSAM = ["--optimizer", "xsam_adamw", "--alpha-search", "1", "--rho", "0.3"]
FP16 = ["--fp16", "--fp16-init-scale", "64"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("gpu-path")))


def trainer_on(device, data, extra):
    return build_trainer(data, extra, cpu=device == "cpu")


def stand_in_flat_fp16(device, monkeypatch):
    if device == "cpu":
        monkeypatch.setattr(torch.cuda, "current_device", lambda: None)  # CPU tensors' index
        monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)


def amp_scaler(device, trainer, scale):
    """The live scaler of an --amp trainer (on CPU: torch.amp.GradScaler('cpu') put in)."""
    wrapper = trainer.optimizer
    if device == "cpu":
        wrapper._grad_scaler = torch.amp.GradScaler("cpu", init_scale=float(scale))
    assert wrapper.scaler.is_enabled()
    return wrapper.scaler


def amp_flags(scale):
    return ["--amp", "--fp16-init-scale", str(scale)]


class CudaRngStandIn:
    """torch.cuda says it is available, its current device is the CPU, and its RNG functions
    act on a CPU generator."""

    def __init__(self, monkeypatch):
        self.generator = torch.Generator()
        for name, fn in (("is_available", lambda: True),
                         ("current_device", lambda: torch.device("cpu")),  # clip_grad_norm's
                         ("get_rng_state", lambda device="cuda": self.generator.get_state()),
                         ("set_rng_state", lambda state, device="cuda":
                          self.generator.set_state(state)),
                         ("manual_seed", lambda seed: self.generator.manual_seed(seed)),
                         ("manual_seed_all", lambda seed: self.generator.manual_seed(seed))):
            monkeypatch.setattr(torch.cuda, name, fn)

    def draw(self):
        return torch.rand((), generator=self.generator)


def master(trainer):
    inner = getattr(trainer.optimizer, "fp32_optimizer", trainer.optimizer)
    return torch.cat([p.detach().reshape(-1).float().clone() for p in inner.params])


def loss_scale(trainer):
    scaler = trainer.optimizer.scaler
    return scaler.get_scale() if hasattr(scaler, "get_scale") else scaler.loss_scale


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------- --fp16, flat


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_flat_master_tensor_matches_fp32_and_restores_the_weights(data, device,
                                                                       monkeypatch):
    stand_in_flat_fp16(device, monkeypatch)
    runs = {}
    for name, extra in (("fp32", []), ("flat", FP16),
                        ("per-parameter", FP16 + ["--fp16-no-flatten-grads"])):
        _, task, trainer = trainer_on(device, data, XSAM + extra)
        records = instrument(trainer)
        xsam = trainer._xsam_glue.xsam
        theta0, model0, at_step = master(trainer), flat_params(trainer.model), {}
        step = xsam.base_optimizer.step

        def spy(*a, _step=step, _trainer=trainer, _at=at_step, **k):
            _at["master"], _at["model"] = master(_trainer), flat_params(_trainer.model)
            return _step(*a, **k)

        xsam.base_optimizer.step = spy
        trainer.train_step(batches(task, trainer, 8, 1))
        runs[name] = dict(record=records[0], theta0=theta0, model0=model0, trainer=trainer,
                          **at_step)
    flat = runs["flat"]["trainer"].optimizer
    assert flat.has_flat_params and len(list(flat.fp32_optimizer.params)) == 1
    assert next(flat.fp32_optimizer.params).numel() == runs["flat"]["model0"].numel()
    assert not runs["per-parameter"]["trainer"].optimizer.has_flat_params
    ref = runs["fp32"]["record"]
    # ρ = 0.3: the maximum is inside the grid (α* = 1.2 on CPU), so "the same α* as fp32" below
    # can fail; at the grid's edge (2.0, the default ρ) any probes still rising would pass
    assert 0.0 < ref["alpha"] < 2.0
    for name in ("flat", "per-parameter"):
        run, record = runs[name], runs[name]["record"]
        # θ restored before AdamW's step: the fp32 master and the fp16 weights the model reads
        assert torch.equal(run["master"], run["theta0"])
        assert torch.equal(run["model"], run["model0"])
        assert record["alpha"] == ref["alpha"]  # same α* as fp32
        assert max(abs(a - b) for a, b in zip(record["probe_losses"], ref["probe_losses"])) \
            <= 1e-2 * max(ref["probe_losses"])  # the whole probe curve
        assert abs(record["gk_norm"] - ref["gk_norm"]) <= 1e-2 * ref["gk_norm"]
        assert abs(record["phi"] - ref["phi"]) <= 1e-2  # radians
        assert rel(record["adam_grad"], ref["adam_grad"]) <= 2e-2  # fp16 arithmetic in the passes
        # after the step the fp16 weights are the new master, rounded
        trainer = run["trainer"]
        assert torch.equal(flat_params(trainer.model), master(trainer).half().float())
    # both layouts run the same fp16 passes; only the fp32 vector math is laid out differently
    assert rel(runs["flat"]["record"]["adam_grad"],
               runs["per-parameter"]["record"]["adam_grad"]) <= 1e-3


# ---------------------------------------------------------------------------- overflows


def state(trainer):
    glue = getattr(trainer, "_xsam_glue", None)
    return dict(model=flat_params(trainer.model), master=master(trainer),
                scale=loss_scale(trainer), updates=trainer.get_num_updates(),
                clock=dict(glue.xsam.search_state) if glue else None)


def overflow(data, device, optimizer, flags, bad_call, scale=None):
    """Two updates; the criterion returns inf on call ``bad_call`` of the second (1 = the
    trainer's own pass, 2 = XSAM's pass at the ascent point). Returns (trainer, samples,
    state before the second update, state after it)."""
    opts = (["--optimizer", "adam"] if optimizer == "adam"
            else ["--optimizer", "xsam_adamw", "--alpha-search", "1"])
    _, task, trainer = trainer_on(device, data, opts + flags)
    if scale is not None:
        amp_scaler(device, trainer, scale)
    samples = batches(task, trainer, 8, 3)
    trainer.train_step([samples[0]])
    before = state(trainer)
    calls = poison(trainer.criterion, {bad_call}, value=float("inf"))
    trainer.train_step([samples[1]])
    assert calls[0] >= bad_call  # the poisoned pass ran
    trainer.criterion.forward = type(trainer.criterion).forward.__get__(trainer.criterion)
    return trainer, samples, before, state(trainer)


def assert_skipped(before, after):
    assert after["scale"] == before["scale"] / 2  # the loss scale backs off
    assert after["updates"] == before["updates"]  # no update counted
    assert torch.equal(after["model"], before["model"])  # θ bit for bit
    assert torch.equal(after["master"], before["master"])
    assert after["clock"] == before["clock"]  # α and the search clock untouched


def assert_trains_on(trainer, samples, before):
    trainer.train_step([samples[2]])
    final = state(trainer)
    assert final["updates"] == before["updates"] + 1 and torch.isfinite(final["master"]).all()
    assert final["clock"]["step"] == before["clock"]["step"] + 1


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_flat_overflow_in_an_extra_pass_is_skipped_like_adamw(data, device, monkeypatch):
    stand_in_flat_fp16(device, monkeypatch)
    _, _, adam_before, adam_after = overflow(data, device, "adam", FP16, 1)
    assert_skipped(adam_before, adam_after)  # the reference: AdamW's own pass overflows
    trainer, samples, before, after = overflow(data, device, "xsam_adamw", FP16, 2)
    assert trainer.optimizer.has_flat_params
    assert_skipped(before, after)
    assert_trains_on(trainer, samples, before)


@pytest.mark.parametrize("device", DEVICES)
def test_amp_overflow_in_an_extra_pass_is_skipped_like_adamw(data, device):
    flags = amp_flags(1024) + ["--amp-batch-retries", "0"]
    _, _, adam_before, adam_after = overflow(data, device, "adam", flags, 1, scale=1024)
    assert_skipped(adam_before, adam_after)
    trainer, samples, before, after = overflow(data, device, "xsam_adamw", flags, 2, scale=1024)
    assert before["scale"] == 1024
    assert_skipped(before, after)
    assert_trains_on(trainer, samples, before)


@pytest.mark.parametrize("device", DEVICES)
def test_amp_overflow_retried_at_half_scale_commits_once(data, device):
    """fairseq retries an overflowing --amp batch (--amp-batch-retries): the retry re-records the
    batch, and the update, its search and the clock commit once."""
    flags = amp_flags(1024) + ["--amp-batch-retries", "1"]
    trainer, _, before, after = overflow(data, device, "xsam_adamw", flags, 2, scale=1024)
    assert after["scale"] == 512 and after["updates"] == before["updates"] + 1
    assert after["clock"]["step"] == before["clock"]["step"] + 1
    assert not torch.equal(after["master"], before["master"])
    assert torch.isfinite(after["master"]).all()


# ---------------------------------------------------------------------------- --amp, live scale


def amp_run(data, device, scale, updates=3):
    """Records of ``updates`` XSAM updates (fp32 if scale is None, else --amp at that scale),
    Δθ, and the loss scale after each update."""
    _, task, trainer = trainer_on(device, data, XSAM + (amp_flags(scale) if scale else []))
    scaler = amp_scaler(device, trainer, scale) if scale else None
    records, theta0, scales = instrument(trainer), master(trainer), []
    for sample in batches(task, trainer, 8, updates):
        trainer.train_step([sample])
        scales.append(scaler.get_scale() if scaler else None)
    return records, master(trainer) - theta0, scales


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [2 ** 10])
def test_amp_with_a_live_loss_scale_matches_fp32(data, device, scale):
    """A live scaler at a scale != 1 (at 1, dividing by the scale once or twice is the same, and
    a missing or double unscale would pass)."""
    ref, ref_delta, _ = amp_run(data, device, None)
    got, delta, scales = amp_run(data, device, scale)
    assert scales == [scale] * 3  # live, never overflowed
    # CPU: autocast changes nothing, scaling by 2^k is exact: fp32 to round-off. GPU: fp16 passes
    tol = 1e-6 if device == "cpu" else 3e-2
    assert len(got) == len(ref) == 3
    for r, r32 in zip(got, ref):
        assert abs(r["gk_norm"] - r32["gk_norm"]) <= tol * r32["gk_norm"]  # ‖g_k‖, true units
        assert abs(r["phi"] - r32["phi"]) <= tol * max(1.0, r32["phi"])
        losses = r32["probe_losses"]
        at = [round(0.1 * i, 12) for i in range(len(losses))].index(r["alpha"])
        assert losses[at] >= max(losses) - tol * abs(max(losses))  # α* (CPU: fp32's exactly)
        # what AdamW receives: the true descent gradient, not divided by the scale twice
        assert rel(r["adam_grad"], r32["adam_grad"]) <= (tol if device == "cpu" else 0.1)
    assert rel(delta, ref_delta) <= (tol if device == "cpu" else 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_without_the_glue_fix_fairseq_unscales_amp_gradients_twice(data, device, monkeypatch):
    """What ``Precision.after_clip`` repairs: AMPOptimizer unscales the inner optimizer in
    clip_grad_norm and again in ``scaler.step(fp32_optimizer)``."""
    from fairseq_xsam.fairseq.glue import Precision

    fixed, _, _ = amp_run(data, device, 2 ** 10, updates=1)
    monkeypatch.setattr(Precision, "after_clip", lambda self: None)
    broken, _, _ = amp_run(data, device, 2 ** 10, updates=1)
    ratio = broken[0]["adam_grad"].norm() / fixed[0]["adam_grad"].norm()
    assert math.isclose(float(ratio), 2.0 ** -10, rel_tol=1e-5 if device == "cpu" else 1e-2)


# ---------------------------------------------------------------------------- RNG and autocast


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["fp32", "amp"])
def test_every_pass_replays_the_cuda_generator_under_the_trainers_autocast(data, device,
                                                                          precision,
                                                                          monkeypatch):
    """Two micro-batches (--update-freq 2). The criterion multiplies the loss by 1 + u/2, u drawn
    from the CUDA generator (as dropout draws its masks there): every XSAM pass — gradients and
    the 21 probes — must draw the u its micro-batch drew in the trainer's pass, run under the
    trainer's CUDA autocast (on with --amp), and leave the generators where AdamW's update
    leaves them."""
    runs = {}
    for name, opts in (("adamw", ["--optimizer", "adam"]), ("xsam", XSAM)):
        flags = opts + ["--update-freq", "2"] + (amp_flags(8) if precision == "amp" else [])
        _, task, trainer = trainer_on(device, data, flags)
        if precision == "amp":
            amp_scaler(device, trainer, 8)
        inner = getattr(trainer.optimizer, "fp32_optimizer", trainer.optimizer)
        samples = batches(task, trainer, 4, 2)
        if device == "cpu":
            cuda = CudaRngStandIn(monkeypatch)
            draw = cuda.draw
        else:
            def draw():
                return torch.rand((), device="cuda")
        seen, at_step = [], {}
        forward = trainer.criterion.forward

        def noisy(model, sample, *a, _forward=forward, _seen=seen, _draw=draw, **k):
            u = _draw()
            _seen.append((float(u), torch.is_grad_enabled(), torch.is_autocast_enabled("cuda")))
            loss, size, log = _forward(model, sample, *a, **k)
            return loss * (1 + 0.5 * u), size, log

        trainer.criterion.forward = noisy
        step = inner.optimizer.step

        def spy(*a, _step=step, _at=at_step, **k):
            _at["cuda"], _at["cpu"] = torch.cuda.get_rng_state(), torch.get_rng_state()
            return _step(*a, **k)

        inner.optimizer.step = spy
        trainer.train_step(samples)
        assert trainer.get_num_updates() == 1
        runs[name] = seen, at_step
        monkeypatch.undo()
    (adam, adam_at), (xsam, xsam_at) = runs["adamw"], runs["xsam"]
    assert len(adam) == 2 and adam[0][0] != adam[1][0]
    passes = 1 + 1 + 21  # the trainer's, the ascent point's, the 21 probes
    assert len(xsam) == 2 * passes
    assert [u for u, _, _ in xsam] == [u for u, _, _ in adam] * passes
    assert [g for _, g, _ in xsam] == [True] * 4 + [False] * 42  # probes: forward only
    assert all(a == (precision == "amp") for _, _, a in adam + xsam)
    assert torch.equal(xsam_at["cuda"], adam_at["cuda"])
    assert torch.equal(xsam_at["cpu"], adam_at["cpu"])
