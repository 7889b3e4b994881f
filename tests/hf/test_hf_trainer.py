"""XSAM in the Hugging Face Trainer (fairseq_xsam.hf) on a tiny Marian model, on the CPU.

Independent expectations: the plain-PyTorch XSAM on one big batch (the descent gradient, α),
the Trainer with other batch shapes (accumulation), a straight run (resume), one process
(two processes), an fp32 run (the fp16 loss-scaling stand-in), HF's own clipping rule."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from fairseq_xsam import XSAM  # noqa: E402
from fairseq_xsam.hf import equip  # noqa: E402
from fairseq_xsam.settings import OptionError  # noqa: E402
from tests.hf.hf_helpers import collate, flat, make_trainer, sentences, tiny_model, token_loss  # noqa: E402,I001

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = dict(rho=0.05, probe_rho=0.15)


class Grabber(TrainerCallback):
    """The gradients the optimizer steps on (after clipping), per update."""

    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()
                           if p.grad is not None})


def hand_descent(model, batch, autocast=None, loss_scale=1.0, **options):
    """The descent gradient and α of the first update, by the plain XSAM class on one batch;
    ``autocast`` (a dtype): the model's forward under CPU autocast, the loss in fp32, as
    accelerate runs a prepared model; ``loss_scale``: each backward of loss x scale, divided
    back."""
    model = copy.deepcopy(model)
    model.train()
    if options.get("sam_variant", "xsam") == "xsam":
        options = {"alpha_search": 1, **options}
    params = [p for p in model.parameters() if p.requires_grad]
    xsam = XSAM(params, torch.optim.SGD, lr=0.0, **options)
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def loss():
        with torch.autocast("cpu", dtype=autocast or torch.float32, enabled=bool(autocast)):
            outputs = model(**inputs)
        return token_loss(outputs, batch["labels"])

    def compute_grad():
        xsam.zero_grad(set_to_none=True)
        (loss() * loss_scale).backward()
        torch._foreach_div_([p.grad for p in params if p.grad is not None], loss_scale)

    compute_grad()
    info = xsam.sharpness_gradient(compute_grad, loss)
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()
            if p.grad is not None}, info


def close(a: dict, b: dict, rtol=1e-5, atol=1e-7) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=rtol, atol=atol)
                                        for k in a)


@pytest.mark.parametrize("variant,steps,accumulation", [
    ("xsam", 1, 1), ("xsam", 1, 2), ("xsam", 3, 2), ("sam", 1, 2), ("lsam", 1, 1),
    ("fixed", 2, 1)])
def test_descent_gradient_equals_plain_xsam_on_one_big_batch(tmp_path, variant, steps,
                                                              accumulation):
    model, grab = tiny_model(), Grabber()
    trainer = make_trainer(tmp_path, model=copy.deepcopy(model), batch=4 // accumulation,
                           accumulation=accumulation, steps=1, callbacks=[grab])
    options = dict(OPTIONS, sam_variant=variant, ascent_steps=steps, alpha=0.5)
    equip(trainer, **options)
    trainer.train()
    expected, info = hand_descent(model, collate(sentences()[:4]), **options)
    assert close(grab.grads[0], expected)
    if variant == "xsam":
        assert trainer._xsam.alpha == pytest.approx(info.alpha)


def test_dropout_masks_are_replayed_in_every_pass(tmp_path):
    """Dropout on: every pass of the update sees the masks of the Trainer's pass, as the plain
    XSAM's closure step replays its start state in every pass."""
    model, grab, starts = tiny_model(dropout=0.3), Grabber(), []

    class Start(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            starts.append(torch.get_rng_state())

    trainer = make_trainer(tmp_path, model=copy.deepcopy(model), steps=1,
                           callbacks=[grab, Start()])
    equip(trainer, **OPTIONS, alpha_search=1)
    trainer.train()
    hand = copy.deepcopy(model)
    hand.train()
    xsam = XSAM([p for p in hand.parameters() if p.requires_grad], torch.optim.SGD, lr=0.0,
                **OPTIONS, alpha_search=1)
    batch = collate(sentences()[:4])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    torch.set_rng_state(starts[0])
    xsam.step(lambda: token_loss(hand(**inputs), batch["labels"]))
    expected = {n: p.grad for n, p in hand.named_parameters() if p.grad is not None}
    assert close(grab.grads[0], expected) and xsam.alpha == trainer._xsam.alpha


def test_accumulation_equals_one_big_batch_over_several_updates(tmp_path):
    runs = []
    for batch, accumulation in ((4, 1), (2, 2), (1, 4)):
        trainer = make_trainer(tmp_path / f"{batch}", batch=batch, accumulation=accumulation,
                               steps=3)
        equip(trainer, **OPTIONS, alpha_search=1)
        trainer.train()
        lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
        runs.append((flat(trainer.model), trainer._xsam.alpha, lrs))
    assert runs[0][2] == pytest.approx([1e-2, 1e-2 * 2 / 3, 1e-2 / 3])  # once per update
    for params, alpha, lrs in runs[1:]:
        assert torch.allclose(params, runs[0][0], rtol=0, atol=5e-5)  # (AdamW: ±lr per step)
        assert alpha == runs[0][1] and lrs == runs[0][2]


def test_max_grad_norm_clips_the_descent_gradient_not_the_first_pass(tmp_path):
    model, grab = tiny_model(), Grabber()
    trainer = make_trainer(tmp_path, model=copy.deepcopy(model), steps=1, max_grad_norm=0.05,
                           callbacks=[grab])
    equip(trainer, **OPTIONS)
    trainer.train()
    descent, _ = hand_descent(model, collate(sentences()[:4]), **OPTIONS)
    norm = torch.cat([g.reshape(-1) for g in descent.values()]).norm()
    assert norm > 0.05  # clipping is active
    clipped = {n: g * (0.05 / (norm + 1e-6)) for n, g in descent.items()}
    assert close(grab.grads[0], clipped)
    assert trainer.state.log_history[0]["grad_norm"] == pytest.approx(float(norm), rel=1e-5)


def test_resume_from_a_trainer_checkpoint_is_bit_exact(tmp_path):
    """Dropout on, α searched every 3 updates: a resumed run needs α, the search clock, AdamW's
    state, the scheduler and the random state back exactly."""
    def run(out, resume=None):
        trainer = make_trainer(out, model=tiny_model(dropout=0.2), steps=5,
                               save_strategy="steps", save_steps=2)
        equip(trainer, **OPTIONS, alpha_search=3, alpha_max="auto")
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = run(tmp_path / "a")
    resumed = run(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-2"))
    assert torch.equal(flat(straight.model), flat(resumed.model))
    assert straight._xsam.search_state == resumed._xsam.search_state
    assert straight._xsam.search_state["step"] == 5
    a, b = straight._xsam.state_dict()["state"], resumed._xsam.state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)


def test_the_random_stream_after_an_update_is_a_plain_updates(tmp_path):
    """The extra passes replay the micro-batches' random state (dropout masks) and put back the
    state the Trainer's own pass left: training draws the same numbers as with AdamW."""
    states = []
    for equipped in (False, True):
        seen = []

        class Watch(TrainerCallback):
            def on_step_end(self, args, state, control, seen=seen, **kwargs):
                seen.append(torch.get_rng_state())

        trainer = make_trainer(tmp_path / str(equipped), model=tiny_model(dropout=0.2),
                               accumulation=2, batch=2, steps=2, callbacks=[Watch()])
        if equipped:
            equip(trainer, **OPTIONS, alpha_search=1)
        trainer.train()
        states.append(seen)
    assert all(torch.equal(a, b) for a, b in zip(*states)) and len(states[1]) == 2


def test_two_processes_equal_one_process_with_accumulation_two(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                           "2", "--standalone", "-m", "tests.hf.ddp_hf_worker",
                           str(tmp_path)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    single = make_trainer(tmp_path / "single", batch=2, accumulation=2, steps=3)
    equip(single, **OPTIONS, alpha_search=1)
    single.train()
    for rank in ranks:
        assert torch.allclose(rank["params"], flat(single.model), rtol=1e-5, atol=1e-6)
        assert rank["alphas"] == ranks[0]["alphas"]  # every worker picks the same α
    assert ranks[0]["alpha"] == single._xsam.alpha


def fp16_stand_in(trainer, init_scale=2.0 ** 12):
    """What accelerate sets up for fp16 on a GPU (it refuses fp16 on the CPU), on the CPU: a
    GradScaler (CPU build) that scales every backward and unscales before clipping, and, since
    ``native_amp`` is on when ``train()`` prepares the model, the forward under fp16 autocast."""
    accelerator = trainer.accelerator
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    accelerator.native_amp = True
    accelerator.state._mixed_precision = "fp16"
    return accelerator


@pytest.fixture
def restore_precision():
    from accelerate.state import AcceleratorState
    yield
    if AcceleratorState._shared_state:
        AcceleratorState._shared_state["_mixed_precision"] = "no"


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_passes_replay_autocast_and_undo_loss_scaling(tmp_path, precision,
                                                                      restore_precision):
    """fp16: accelerate's autocast and GradScaler (the stand-in, on the CPU); bf16: autocast.
    The descent gradient equals the plain XSAM's with the forward under the same autocast (and,
    for fp16, the same loss scale); it differs from fp32's, so the comparison can tell."""
    model, grab = tiny_model(), Grabber()
    trainer = make_trainer(tmp_path, model=copy.deepcopy(model), steps=1, callbacks=[grab],
                           bf16=precision == "bf16")
    equip(trainer, **OPTIONS)
    if precision == "fp16":
        accelerator = fp16_stand_in(trainer)
    trainer.train()
    if precision == "fp16":
        assert float(accelerator.scaler.get_scale()) == 2.0 ** 12  # scaled, no overflow
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    batch = collate(sentences()[:4])
    scale = 2.0 ** 12 if precision == "fp16" else 1.0
    expected, info = hand_descent(model, batch, autocast=dtype, loss_scale=scale, **OPTIONS)
    in_fp32, _ = hand_descent(model, batch, **OPTIONS)
    assert close(grab.grads[0], expected, rtol=1e-5, atol=1e-7)
    assert trainer._xsam.alpha == pytest.approx(info.alpha)
    assert not close(grab.grads[0], in_fp32, rtol=1e-3, atol=1e-5)


def test_fp16_overflow_in_an_ascent_pass_skips_the_update(tmp_path, restore_precision):
    """(An inf in the ascent gradient reaches the descent gradient through its norm, so this
    passes without the glue's explicit poisoning of the update, which is a guard for passes
    whose overflow would not propagate.)"""
    model = tiny_model()
    trainer = make_trainer(tmp_path, model=model, steps=2)
    equip(trainer, **OPTIONS, alpha_search=1, alpha=0.7)
    accelerator = fp16_stand_in(trainer)
    calls = []

    def overflow_in_the_ascent_pass(module, args, output):
        calls.append(torch.is_grad_enabled())
        if len(calls) == 2:  # update 1: the trainer's pass, then the ascent pass
            output["logits"] = output["logits"] * float("inf")
        return output

    model.register_forward_hook(overflow_in_the_ascent_pass)
    start, seen = flat(model).clone(), []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append((flat(model).clone(), trainer.lr_scheduler.get_last_lr()[0],
                         float(accelerator.scaler.get_scale()),
                         dict(trainer._xsam.search_state)))

    trainer.add_callback(Watch())
    trainer.train()
    (after1, lr1, scale1, clock1), (after2, lr2, scale2, clock2) = seen
    assert torch.equal(after1, start)  # update 1 skipped, parameters untouched
    assert scale1 == 2.0 ** 11 and lr1 == 1e-2  # scale backed off, scheduler not stepped
    assert clock1["step"] == 0 and clock1["alpha"] == 0.7  # α not committed
    assert not torch.equal(after2, start) and clock2["step"] == 1 and scale2 == scale1


def test_alpha_is_searched_at_the_first_update_of_every_epoch_and_logged(tmp_path):
    trainer = make_trainer(tmp_path, steps=8)  # 16 sentences, batch 4: 4 updates per epoch
    equip(trainer, **OPTIONS)  # alpha_search unset: every epoch
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [("xsam_alpha_at_edge" in h) for h in logs] == [True, False, False, False] * 2
    assert all({"xsam_alpha", "xsam_phi", "xsam_gk_norm"} <= h.keys() for h in logs)
    assert all(0 < h["xsam_phi"] < 90 and h["xsam_gk_norm"] > 0 for h in logs)


def test_bad_options_and_setups_fail_with_one_line_before_training(tmp_path):
    trainer = make_trainer(tmp_path)
    with pytest.raises(OptionError, match=r"^Invalid rho value: -1 \(allowed: rho > 0\)$"):
        equip(trainer, rho=-1)
    with pytest.raises(ValueError, match=r"^Invalid XSAM option 'rh' \(allowed: rho, probe_rho"):
        equip(trainer, rh=0.1)
    with pytest.raises(OptionError, match=r"^Invalid alpha value: 3"):
        equip(trainer, alpha=3, sam_variant="fixed")
    model = tiny_model()
    given = make_trainer(tmp_path, model=model)
    given.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"^equip\(\): the Trainer was given an optimizer"):
        equip(given)
    several = make_trainer(tmp_path)
    several.args._n_gpu = 2
    with pytest.raises(ValueError, match=r"^equip\(\): DataParallel .* is not supported"):
        equip(several)
    free = make_trainer(tmp_path, optim="schedule_free_adamw")
    with pytest.raises(ValueError, match=r"schedule_free_adamw.*\(allowed: optimizers that"):
        equip(free)
    assert trainer.state.global_step == 0 and trainer.optimizer is None


def test_the_core_package_does_not_import_transformers():
    code = "import fairseq_xsam, sys; assert 'transformers' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "ok"


def test_run_summary_is_json(tmp_path):
    trainer = make_trainer(tmp_path, steps=1)
    equip(trainer, **OPTIONS)
    trainer.train()
    json.dumps(trainer.state.log_history)  # every logged XSAM value is a plain number
