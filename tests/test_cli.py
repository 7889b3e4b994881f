"""The real command line: ``fairseq-train --user-dir fairseq_xsam --optimizer xsam_adamw``."""

import os
import re
import subprocess
import sys

import pytest
import torch

from fairseq_helpers import TINY_ARCH, make_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(ROOT, "fairseq_xsam")
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("cli")))


def train(data, save_dir, *extra, check=True):
    cmd = [os.path.join(BIN, "fairseq-train"), data, "--user-dir", USER_DIR, "--task",
           "translation", "--cpu", *TINY_ARCH, "--optimizer", "xsam_adamw", "--lr", "2e-3",
           "--adam-betas", "(0.9,0.98)", "--weight-decay", "1e-4", "--dropout", "0.1",
           "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
           "--max-tokens", "500", "--seed", "3", "--save-dir", save_dir, "--no-progress-bar",
           "--log-format", "simple", "--log-interval", "1", "--num-workers", "0", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def searches(log):
    return [int(line.split("at update ")[1].split(":")[0]) for line in log.splitlines()
            if "alpha search at update" in line]


def test_train_logs_xsam_metrics_and_resume_continues_the_search_clock(data, tmp_path):
    opts = ["--alpha-search", "3", "--no-epoch-checkpoints"]
    full = train(data, str(tmp_path / "full"), "--max-epoch", "4", *opts)
    log = full.stdout + full.stderr
    for key in ("xsam_alpha", "xsam_phi", "xsam_gk_norm", "xsam_probe_max", "alpha search"):
        assert key in log, key
    assert searches(log) == [1, 4, 7, 10, 13, 16]  # 4 updates an epoch, every 3rd update

    part = str(tmp_path / "part")
    first = train(data, part, "--max-epoch", "2", *opts)
    second = train(data, part, "--max-epoch", "4", *opts)  # resumes from checkpoint_last.pt
    assert "Loaded checkpoint" in second.stdout + second.stderr
    assert searches(first.stdout + first.stderr) + searches(second.stdout + second.stderr) == \
        searches(log)
    a, b = load(tmp_path / "full" / "checkpoint_last.pt"), load(os.path.join(part, "checkpoint_last.pt"))
    updates = a["optimizer_history"][-1]["num_updates"]
    assert updates == b["optimizer_history"][-1]["num_updates"] == 16
    xa, xb = a["last_optimizer_state"]["xsam"], b["last_optimizer_state"]["xsam"]
    assert xa["step"] == xb["step"] == updates
    assert xb["epoch"] == 4 and set(xa) == {"alpha", "step", "epoch", "searched_epoch"}
    assert all(int(s["step"]) == updates for s in b["last_optimizer_state"]["state"].values())


def test_epoch_search_happens_once_per_epoch_also_after_resume(data, tmp_path):
    save = str(tmp_path / "ep")
    first = train(data, save, "--max-epoch", "1", "--no-epoch-checkpoints")
    second = train(data, save, "--max-epoch", "3", "--no-epoch-checkpoints")
    assert searches(first.stdout + first.stderr) == [1]
    assert searches(second.stdout + second.stderr) == [5, 9]
    state = load(os.path.join(save, "checkpoint_last.pt"))["last_optimizer_state"]["xsam"]
    assert state["searched_epoch"] == 3


def test_stock_generate_reads_an_xsam_checkpoint(data, tmp_path):
    save = str(tmp_path / "ck")
    train(data, save, "--max-epoch", "1")
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")  # torch>=2.6 vs fairseq 0.12
    out = subprocess.run([os.path.join(BIN, "fairseq-generate"), data, "--path",
                          os.path.join(save, "checkpoint_last.pt"), "--cpu", "--beam", "2",
                          "--gen-subset", "test", "--required-batch-size-multiple", "1",
                          "--max-tokens", "2000"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sum(line.startswith("H-") for line in out.stdout.splitlines()) == 20


@pytest.mark.parametrize("args,message", [
    (["--rho", "0"], "Invalid --rho value: 0.0 (allowed: --rho > 0)"),
    (["--probe-rho", "-1"], "Invalid --probe-rho value: -1.0 (allowed: --probe-rho > 0)"),
    (["--ascent-steps", "0"], "Invalid --ascent-steps value: 0 (allowed: an integer >= 1)"),
    (["--sam-variant", "gsam"], "Invalid --sam-variant value: 'gsam'"),
    (["--alpha-step", "5"], "(allowed: 0 < --alpha-step <= --alpha-max = 2.0)"),
    (["--alpha-search", "weekly"], "Invalid --alpha-search value: 'weekly'"),
    (["--sam-variant", "fixed", "--alpha-search", "5"], "only 'xsam' searches"),
])
def test_bad_options_fail_at_start_with_one_line(data, tmp_path, args, message):
    out = train(data, str(tmp_path / "bad"), "--max-epoch", "1", *args, check=False)
    assert out.returncode != 0
    last = [line for line in out.stderr.splitlines() if line.strip()][-1]
    assert message in last, last
    assert not os.path.exists(tmp_path / "bad" / "checkpoint_last.pt")


def test_adam_checkpoint_fine_tunes_with_xsam_adamw(data, tmp_path):
    save = str(tmp_path / "ft")
    first = train(data, save, "--max-epoch", "1", "--optimizer", "adam")  # the later flag wins
    assert "XSAMAdamW" not in first.stdout + first.stderr
    adam_losses = [float(x) for x in
                   re.findall(r"train_inner.*? loss=([\d.]+)", first.stdout + first.stderr)]
    # without --reset-optimizer: fairseq's own one-line message, nothing written
    before = open(os.path.join(save, "checkpoint_last.pt"), "rb").read()
    refused = train(data, save, "--max-epoch", "2", check=False)
    assert refused.returncode != 0
    last = [line for line in refused.stderr.splitlines() if line.strip()][-1]
    assert "--reset-optimizer" in last and "FairseqAdam vs XSAMAdamW" in last, last
    assert open(os.path.join(save, "checkpoint_last.pt"), "rb").read() == before
    # with it: the weights carry over; the optimizer, its update count (fairseq resets it with
    # the optimizer) and XSAM start fresh: the epoch search runs at the first update
    tuned = train(data, save, "--max-epoch", "2", "--reset-optimizer")
    log = tuned.stdout + tuned.stderr
    assert "Loaded checkpoint" in log and searches(log) == [1]
    xsam_losses = [float(x) for x in re.findall(r"train_inner.*? loss=([\d.]+)", log)]
    assert len(adam_losses) == len(xsam_losses) == 4
    assert xsam_losses[0] < adam_losses[0] - 0.1  # continues from the trained weights
    state = load(os.path.join(save, "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["optimizer_name"] == "XSAMAdamW"
    assert state["last_optimizer_state"]["xsam"]["step"] == 4  # XSAM's own updates
