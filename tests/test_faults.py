"""Faults injected into XSAM's extra passes inside fairseq's trainer (CPU, fp32)."""

import math

import pytest
import torch

from fairseq_helpers import batches, build_trainer, flat_params, make_corpus


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("faults")))


def poison(criterion, bad_calls, probes_only=False):
    """Makes the criterion's loss NaN on the chosen calls (1 = the trainer's own pass)."""
    forward = criterion.forward
    calls = [0]

    def wrapped(model, sample, *a, **k):
        loss, size, log = forward(model, sample, *a, **k)
        calls[0] += 1
        if calls[0] in bad_calls and (not probes_only or not torch.is_grad_enabled()):
            loss = loss * float("nan")
        return loss, size, log

    criterion.forward = wrapped
    return calls


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
