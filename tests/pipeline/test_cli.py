"""The real command line: ``fairseq-train --user-dir fairseq_xsam --optimizer xsam_adamw``."""

import os
import re
import subprocess
import sys

import pytest
from fairseq_helpers import TINY_ARCH, make_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    out = subprocess.run(cmd, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"})
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def python(code, cwd):
    """Runs ``code`` in a fresh interpreter (nothing imported yet); returns its stdout."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_importing_the_package_for_pytorch_neither_imports_nor_patches_fairseq(tmp_path):
    """``from fairseq_xsam import XSAM`` for plain PyTorch: no fairseq module is loaded (so
    nothing of fairseq is patched either)."""
    python("import sys; import fairseq_xsam; from fairseq_xsam import XSAM, settings; "
           "assert not [m for m in sys.modules if m == 'fairseq' or m.startswith('fairseq.')]"
           ", sorted(m for m in sys.modules if m.startswith('fairseq'))", tmp_path)


def test_user_dir_registers_xsam_adamw_and_so_does_importing_the_fairseq_subpackage(tmp_path):
    """--user-dir is fairseq's import_user_module: it imports fairseq_xsam with fairseq loaded,
    and xsam_adamw, its checks and the trainer hook are registered; likewise
    ``import fairseq_xsam.fairseq`` after a PyTorch-only import of fairseq_xsam."""
    check = ("from fairseq.optim import OPTIMIZER_REGISTRY\n"
             "from fairseq.dataclass import utils\n"
             "from fairseq.trainer import Trainer\n"
             "assert OPTIMIZER_REGISTRY['xsam_adamw'].__name__ == 'XSAMAdamW'\n"
             "assert utils.merge_with_parent._xsam_patched\n"
             "assert Trainer._build_optimizer._xsam_patched\n")
    python("import argparse, sys\nfrom fairseq import utils as fairseq_utils\n"
           f"fairseq_utils.import_user_module(argparse.Namespace(user_dir={USER_DIR!r}))\n"
           + check, tmp_path)
    python("import fairseq_xsam\nimport fairseq_xsam.fairseq\n" + check, tmp_path)


def load(path):
    from fairseq_xsam.fairseq.checkpoints import load as safe_load

    return safe_load(path)  # torch's weights_only=True with fairseq's types allowed


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


def test_generate_reads_an_xsam_checkpoint_with_torchs_safe_loader(data, tmp_path):
    """fairseq-generate --user-dir loads with torch's default weights_only=True (no
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD); without --user-dir, torch >= 2.6 refuses a fairseq-train
    checkpoint (it pickles argparse.Namespace), which is what the README says."""
    save = str(tmp_path / "ck")
    train(data, save, "--max-epoch", "1")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    command = [os.path.join(BIN, "fairseq-generate"), data, "--path",
               os.path.join(save, "checkpoint_last.pt"), "--cpu", "--beam", "2",
               "--gen-subset", "test", "--required-batch-size-multiple", "1",
               "--max-tokens", "2000"]
    out = subprocess.run([*command, "--user-dir", USER_DIR], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sum(line.startswith("H-") for line in out.stdout.splitlines()) == 20
    stock = subprocess.run(command, capture_output=True, text=True, env=env)
    assert stock.returncode != 0
    assert "Unsupported global: GLOBAL argparse.Namespace" in stock.stderr


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
