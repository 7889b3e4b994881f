"""XSAM under fairseq tasks other than ``translation`` (tiny configurations on real Multi30k
text, ``task_configs.py``): tasks that override ``train_step`` (multilingual_translation,
translation_lev) and tasks never run before (translation_multi_simple_epoch, masked_lm,
sentence_prediction).

For each task: the α search's probes, replayed forward-only through the task's own
``train_step``, equal the task's summed loss on the moved weights computed by hand (criterion
per language pair, the task's own noise, the same random state); ``--update-freq 2`` equals one
batch of twice the size where the task allows; ``fairseq-train`` trains it and searches α.
One of them resumes bit for bit after SIGKILL. A task whose train_step cannot be replayed
(online back-translation) is refused at start-up.
"""

import os
import re
import subprocess
import sys

import pytest
import task_configs
import torch
from task_configs import TASKS

ROOT = task_configs.ROOT
COMMON = ["--dropout", "0.1", "--max-tokens", "600", "--lr", "1e-3", "--num-workers", "0",
          "--no-progress-bar"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("task_data")
    mono = task_configs.monolingual(str(base / "mono"))
    return {"bilingual": task_configs.bilingual(str(base / "bi")), "monolingual": mono,
            "speech": task_configs.speech(str(base / "speech")),
            "classification": task_configs.classification(
                str(base / "cls"), os.path.join(mono, "dict.txt"))}


def build(datasets, name, extra=(), seed=1):
    from fairseq_xsam.fairseq.harness import build_trainer

    cfg = TASKS[name]
    return build_trainer(datasets[cfg.data], ["--cpu", *cfg.argv, *COMMON,
                                              "--optimizer", "xsam_adamw", *extra], seed=seed)


def batches(task, n, max_sentences):
    """The first n training batches of max_sentences sentences (fixed order)."""
    from fairseq_xsam.fairseq.harness import first_batches

    out = first_batches(task, max_sentences, n)
    assert len(out) == n, f"only {len(out)} batches"
    return out


@pytest.mark.parametrize("name", sorted(TASKS))
def test_probes_are_the_tasks_summed_loss_on_the_moved_weights(datasets, name):
    """Every probe of a search (21 α's) against the hand loss at the same weights: the task's
    losses summed as its definition says, each micro-batch under the random state the trainer's
    pass had, times the trainer's normalisation."""
    from fairseq import utils

    cfg, task, trainer = build(datasets, name, ["--rho", "0.3", "--probe-rho", "0.9",
                                                "--alpha-search", "1", "--update-freq", "2"])
    _ = trainer.optimizer
    glue = trainer._xsam_glue
    pairs = []
    probe = glue._loss

    def checked():
        got = probe()
        hand = 0.0
        with torch.no_grad():
            for m in glue.micro:
                utils.set_rng_state(m.rng)
                trainer.model.train()
                loss = TASKS[name].hand_loss(task, trainer.model, trainer.criterion, m.sample)
                hand = hand + float(loss) * (0.0 if m.ignore_grad else 1.0)
        pairs.append((float(got), hand * float(glue.factor)))
        return got

    glue._loss = checked
    trainer.train_step(batches(task, 2, 4))
    assert len(pairs) == 21
    got = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    hand = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    assert torch.allclose(got, hand, rtol=1e-5, atol=0), (got, hand)
    assert float(got.max() - got.min()) > 1e-4 * float(got.abs().max())  # the probes differ


@pytest.mark.parametrize("name", sorted(n for n, c in TASKS.items() if c.update_freq))
def test_update_freq_2_equals_one_batch_twice_the_size(datasets, name):
    """The descent gradient and the searched α of --update-freq 2 (two batches of 4 sentences)
    equal those of one batch of the same 8 sentences (dropout off: the batches differ in shape,
    so dropout masks could not match)."""
    grads, alphas = {}, {}
    for freq, size in ((2, 4), (1, 8)):
        _, task, trainer = build(datasets, name, ["--rho", "0.3", "--probe-rho", "0.9",
                                                  "--alpha-search", "1",
                                                  *TASKS[name].no_dropout,
                                                  "--update-freq", str(freq)])
        _ = trainer.optimizer
        captured = {}
        clip = trainer._xsam_glue._clip

        def capture(clip_norm, trainer=trainer, captured=captured, clip=clip):
            captured["g"] = torch.cat([p.grad.detach().reshape(-1).clone()
                                       for p in trainer.model.parameters()
                                       if p.grad is not None])
            return clip(clip_norm)

        trainer._xsam_glue._clip = capture
        trainer.train_step(batches(task, freq, size))
        grads[freq], alphas[freq] = captured["g"], trainer._xsam_glue.xsam.alpha
    assert alphas[1] == alphas[2]
    assert float((grads[2] - grads[1]).norm()) <= 1e-5 * float(grads[1].norm())


def test_online_backtranslation_is_refused_with_its_reason(datasets):
    from fairseq_xsam.fairseq.glue import NOT_REPLAYABLE

    cfg, task, trainer = build(datasets, "multilingual_translation")
    task.__class__ = type("OnlineBackTranslationTask", (type(task),), {})
    with pytest.raises(ValueError) as err:
        _ = trainer.optimizer
    assert NOT_REPLAYABLE["OnlineBackTranslationTask"] in str(err.value)


def test_a_task_whose_train_step_never_calls_backward_is_refused_at_its_first_probe(datasets):
    cfg, task, trainer = build(datasets, "masked_lm", ["--alpha-search", "1"])
    step = type(task).train_step

    def silent(self, sample, model, criterion, optimizer, *args, **kwargs):
        if type(optimizer).__name__.startswith("ForwardOnly"):
            return criterion(model, sample)  # forgets optimizer.backward
        return step(self, sample, model, criterion, optimizer, *args, **kwargs)

    task.__class__ = type("Silent", (type(task),), {"train_step": silent})
    with pytest.raises(RuntimeError, match="never called optimizer.backward"):
        trainer.train_step(batches(task, 1, 4))


# --------------------------------------------------------------------------- fairseq-train
def train(data, argv, save, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "fairseq_cli.train", data, "--user-dir",
         os.path.join(ROOT, "fairseq_xsam"), "--cpu", *argv, *COMMON, "--optimizer",
         "xsam_adamw", "--sam-variant", "xsam", "--rho", "0.1", "--probe-rho", "0.3",
         "--alpha-search", "2", "--max-update", "4", "--save-dir", save,
         "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1"],
        capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("name", sorted(n for n in TASKS if n != "sentence_prediction"))
def test_fairseq_train_trains_the_task_and_searches_alpha(datasets, tmp_path, name):
    cfg = TASKS[name]
    out = train(datasets[cfg.data], cfg.argv, str(tmp_path / "ck"))
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    searches = re.findall(r"XSAM alpha search at update (\d+): alpha=([0-9.]+)", log)
    assert [u for u, _ in searches] == ["1", "3"]
    losses = [float(x) for x in re.findall(r"train_inner .*? loss=([0-9.]+)", log)]
    assert len(losses) == 4 and all(x == x for x in losses)


def test_sentence_prediction_fine_tunes_a_masked_lm_checkpoint(datasets, tmp_path):
    """RoBERTa-style: masked_lm pre-training from scratch, then sentence_prediction from its
    checkpoint (the encoder's weights arrive; the classification head is new)."""
    pre = train(datasets["monolingual"], TASKS["masked_lm"].argv, str(tmp_path / "mlm"))
    assert pre.returncode == 0, (pre.stdout + pre.stderr)[-3000:]
    ckpt = str(tmp_path / "mlm" / "checkpoint_last.pt")
    fine = train(datasets["classification"], [*TASKS["sentence_prediction"].argv,
                                              "--restore-file", ckpt, "--reset-optimizer",
                                              "--reset-dataloader", "--reset-meters"],
                 str(tmp_path / "cls"))
    log = fine.stdout + fine.stderr
    assert fine.returncode == 0, log[-3000:]
    assert f"Loaded checkpoint {ckpt}" in log
    assert len(re.findall(r"XSAM alpha search at update", log)) == 2
    from fairseq_xsam.fairseq.checkpoints import load

    pre_w, fine_w = load(ckpt)["model"], load(str(tmp_path / "cls" / "checkpoint_last.pt"))["model"]
    key = "encoder.sentence_encoder.embed_tokens.weight"
    # fine-tuning started from the pre-trained embeddings (4 small updates move them little)
    assert torch.allclose(fine_w[key], pre_w[key], atol=0.05)
    assert any(k.startswith("classification_heads.sentence_classification_head") for k in fine_w)


def test_multilingual_translation_resumes_bit_for_bit_after_sigkill(datasets, tmp_path):
    """SIGKILL right after the checkpoint of update 2, resume: the rest of the run (losses,
    gradient norms, α searches, weights, AdamW and XSAM state) is the uninterrupted run's."""
    from resume_run import sigkill_then_resume_is_bit_exact

    cfg = TASKS["multilingual_translation"]
    lines, searches = sigkill_then_resume_is_bit_exact(
        tmp_path, data=datasets[cfg.data], base=[*cfg.argv, "--max-tokens", "600"])
    assert any("xsam_alpha" in line for line in lines.values()) and len(searches) == 6
