"""Faults injected into XSAM's extra passes inside fairseq's trainer (CPU: fp32 and fp16)."""

import math

import pytest
import torch
from fairseq_helpers import batches, build_trainer, flat_params, make_corpus, poison


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("faults")))


def test_nan_in_the_ascent_point_pass_fails_like_fairseq_and_keeps_state(data, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)  # fairseq writes crash.pt under --save-dir (default ./checkpoints)
    (tmp_path / "checkpoints").mkdir()  # fairseq-train creates it; the bare trainer does not
    _, task, trainer = build_trainer(data, ["--optimizer", "xsam_adamw", "--alpha-search", "1"])
    samples = batches(task, trainer, 8, 2)
    trainer.train_step([samples[0]])
    xsam = trainer._xsam_glue.xsam
    before, clock = flat_params(trainer.model), dict(xsam.search_state)
    poison(trainer.criterion, {2})  # call 2 = the replayed pass at the ascent point
    # fairseq raises FloatingPointError, saves crash.pt, then re-runs the batch under its
    # NanDetector; with torch 2.13 that re-run itself dies in torch's backward-hook code
    # (StopIteration on the model's dict output), a stock fairseq/torch incompatibility.
    with pytest.raises((FloatingPointError, StopIteration)):
        trainer.train_step([samples[1]])
    assert torch.equal(flat_params(trainer.model), before)  # θ restored bit for bit, no step
    assert xsam.search_state == clock and trainer.get_num_updates() == 1
    assert (tmp_path / "checkpoints" / "crash.pt").exists()


def test_non_finite_probes_are_excluded_from_the_alpha_choice(data):
    _, task, trainer = build_trainer(data, ["--optimizer", "xsam_adamw", "--alpha-search", "1"])
    samples = batches(task, trainer, 8, 1)
    _ = trainer.optimizer
    glue = trainer._xsam_glue
    seen = []
    original = glue.xsam.sharpness_gradient

    def spy(*a, **k):
        seen.append(original(*a, **k))
        return seen[-1]

    glue.xsam.sharpness_gradient = spy
    # calls: 1 trainer pass, 2 the ascent-point pass, 3.. the 21 probes (α = 0, 0.1, …, 2)
    bad = set(range(3 + 11, 3 + 21))  # α = 1.1 … 2.0 are NaN
    poison(trainer.criterion, bad, probes_only=True)
    out = trainer.train_step(samples)
    info = seen[0]
    losses = info.probe_losses
    assert torch.isnan(losses[11:]).all() and torch.isfinite(losses[:11]).all()
    assert info.alpha == [round(0.1 * i, 12) for i in range(11)][int(torch.argmax(losses[:11]))]
    assert glue.xsam.alpha == info.alpha and math.isfinite(out["loss"])
    assert torch.isfinite(flat_params(trainer.model)).all()


FP16 = ["--fp16", "--fp16-no-flatten-grads", "--fp16-init-scale", "64"]


def fp16_state(trainer):
    masters = trainer.optimizer.fp32_optimizer.params
    return (flat_params(trainer.model),
            torch.cat([m.detach().reshape(-1).clone() for m in masters]),
            trainer.optimizer.scaler.loss_scale, trainer.get_num_updates())


def overflow_at_second_update(data, optimizer, bad_call, monkeypatch):
    """Two updates under --fp16; the criterion returns inf on ``bad_call`` of the second."""
    # fairseq's overflow branch builds its zero grad norm with .cuda(); on CPU keep it here
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    _, task, trainer = build_trainer(data, ["--optimizer", optimizer, *FP16, *(
        ["--alpha-search", "1"] if optimizer == "xsam_adamw" else [])])
    samples = batches(task, trainer, 8, 3)
    trainer.train_step([samples[0]])
    before = fp16_state(trainer)
    clock = dict(trainer._xsam_glue.xsam.search_state) if optimizer == "xsam_adamw" else None
    calls = poison(trainer.criterion, {bad_call}, value=float("inf"))
    trainer.train_step([samples[1]])
    assert calls[0] >= bad_call  # the poisoned pass ran
    return trainer, samples, before, clock, fp16_state(trainer)


def test_fp16_overflow_in_an_extra_pass_is_skipped_like_adamw(data, monkeypatch):
    # reference: stock fairseq Adam whose own pass overflows
    _, _, adam_before, _, adam_after = overflow_at_second_update(data, "adam", 1, monkeypatch)
    assert adam_after[2] == adam_before[2] / 2 and adam_after[3] == adam_before[3]
    assert torch.equal(adam_after[0], adam_before[0])
    # XSAM: the trainer's pass is fine, the replayed pass at the ascent point overflows
    trainer, samples, before, clock, after = overflow_at_second_update(
        data, "xsam_adamw", 2, monkeypatch)
    assert after[2] == before[2] / 2  # loss scale lowered, as fairseq does
    assert after[3] == before[3]  # no update counted
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])  # bit-exact
    xsam = trainer._xsam_glue.xsam
    assert xsam.search_state == clock  # α and the search clock untouched
    # ... and training goes on: the next update is finite and commits its search
    trainer.criterion.forward = type(trainer.criterion).forward.__get__(trainer.criterion)
    trainer.train_step([samples[2]])
    final = fp16_state(trainer)
    assert final[3] == before[3] + 1 and torch.isfinite(final[1]).all()
    assert not torch.equal(final[1], before[1])
    assert xsam.search_state["step"] == clock["step"] + 1


def test_inf_probe_under_fp16_is_excluded(data, monkeypatch):
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    _, task, trainer = build_trainer(data, ["--optimizer", "xsam_adamw", "--alpha-search", "1",
                                            *FP16])
    samples = batches(task, trainer, 8, 1)
    _ = trainer.optimizer
    xsam = trainer._xsam_glue.xsam
    seen = []
    original = xsam.sharpness_gradient

    def spy(*a, **k):
        seen.append(original(*a, **k))
        return seen[-1]

    xsam.sharpness_gradient = spy
    # calls: 1 trainer pass, 2 the ascent-point pass, 3.. the 21 probes (α = 0, 0.1, …, 2)
    poison(trainer.criterion, set(range(3 + 15, 3 + 21)), probes_only=True,
           value=float("inf"))  # α = 1.5 … 2.0 overflow
    before = fp16_state(trainer)
    trainer.train_step(samples)
    after = fp16_state(trainer)
    assert after[3] == 1 and after[2] == before[2]  # a normal update, scale kept
    losses = seen[0].probe_losses
    assert torch.isinf(losses[15:]).all() and torch.isfinite(losses[:15]).all()
    best = [round(0.1 * i, 12) for i in range(15)][int(torch.argmax(losses[:15]))]
    assert seen[0].searched and xsam.alpha == seen[0].alpha == best


def test_all_probes_non_finite_keeps_alpha_and_warns(data, caplog):
    _, task, trainer = build_trainer(data, ["--optimizer", "xsam_adamw", "--alpha-search", "1",
                                            "--alpha", "0.7"])
    samples = batches(task, trainer, 8, 1)
    _ = trainer.optimizer
    poison(trainer.criterion, set(range(3, 3 + 21)), probes_only=True)  # every probe is NaN
    with caplog.at_level("WARNING"):
        out = trainer.train_step(samples)
    assert trainer._xsam_glue.xsam.alpha == 0.7 and math.isfinite(out["loss"])
    assert trainer.get_num_updates() == 1 and torch.isfinite(flat_params(trainer.model)).all()
    assert any("every probe loss is non-finite; keeping alpha=0.7" in r.getMessage()
               for r in caplog.records)
