"""SIGKILL right after a checkpoint, resume, and compare with the run that was never
interrupted: the check test_resume.py runs for translation and test_tasks.py and
test_alpha_search.py run for other tasks and options (fairseq-train through
pause_worker.py, next to this file)."""

import functools
import os
import re
import signal
import subprocess
import sys
import time

import torch
from fairseq_helpers import TINY_ARCH, make_corpus

from fairseq_xsam.fairseq.checkpoints import load

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
TIMING = re.compile(r"(wps|ups|wall|train_wall|gb_free)=[^,\s]+,?\s?")


#: the task, model and criterion of the run (test_tasks.py passes others)
TRANSLATION = ["--task", "translation", *TINY_ARCH, "--criterion",
               "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-tokens", "500"]


def _command(data, save_dir, extra=(), base=TRANSLATION):
    return [sys.executable, os.path.join(HERE, "pause_worker.py"), data,
            "--user-dir", os.path.join(ROOT, "fairseq_xsam"), "--cpu", *base,
            "--optimizer", "xsam_adamw", "--alpha-search", "3", "--lr", "2e-3",
            "--dropout", "0.1", "--seed", "3", "--max-update", "16", "--max-epoch", "100",
            "--save-dir", save_dir, "--save-interval-updates", "2", "--no-progress-bar",
            "--log-format", "simple", "--log-interval", "1", "--num-workers", "0", *extra]


def per_update(log):
    """update number -> the train_inner line without timings; α searches by update."""
    lines = {}
    for line in log.splitlines():
        m = re.search(r"train_inner[ |:]+(.*num_updates=(\d+).*)", line)
        if m:
            lines[int(m.group(2))] = TIMING.sub("", m.group(1))
    searches = dict(re.findall(r"XSAM alpha search at update (\d+): (.*)", log))
    return lines, {int(k): v for k, v in searches.items()}


def sigkill_then_resume_is_bit_exact(tmp_path, extra=(), before_resume=None, data=None,
                                     base=TRANSLATION):
    """Runs the check with ``extra`` fairseq-train options (``before_resume(save_dir)`` may edit
    the killed run's checkpoint) on ``data`` (default: the synthetic corpus) with the task,
    model and criterion options ``base``; returns the uninterrupted run's per-update lines and
    α searches (see :func:`per_update`)."""
    data = data or make_corpus(str(tmp_path / "corpus"))
    command = functools.partial(_command, base=base)
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env.update(OMP_NUM_THREADS="1", XSAM_PAUSE_AT="-1",
               XSAM_PAUSE_MARKER=str(tmp_path / "paused"))
    whole = subprocess.run(command(data, str(tmp_path / "whole"), extra), capture_output=True,
                           text=True, env=env, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]

    # the same run, killed after the checkpoint of update 2 (mid-epoch 1: fairseq 0.12 freezes
    # an iterator's batches with the numpy seed of the epoch it starts in, so only a resume
    # inside the first epoch can replay the same batches; see README)
    save = str(tmp_path / "killed")
    env["XSAM_PAUSE_AT"] = "2"
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command(data, save, extra), stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 300
        while not (tmp_path / "paused").exists():
            assert proc.poll() is None and time.time() < deadline, open(log_path).read()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    env["XSAM_PAUSE_AT"] = "-1"
    if before_resume is not None:
        before_resume(save)
    resumed = subprocess.run(command(data, save, extra), capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint_last.pt (epoch 1 @ 2 updates)" in resumed.stdout + resumed.stderr

    w_lines, w_search = per_update(whole.stdout + whole.stderr)
    k_lines, k_search = per_update(open(log_path).read())
    r_lines, r_search = per_update(resumed.stdout + resumed.stderr)
    assert sorted(w_lines) == list(range(1, 17)) and sorted(r_lines) == list(range(3, 17))
    assert {u: w_lines[u] for u in (1, 2)} == {u: k_lines[u] for u in (1, 2)}
    assert r_lines == {u: w_lines[u] for u in range(3, 17)}
    assert sorted(w_search) == [1, 4, 7, 10, 13, 16]
    assert r_search == {u: w_search[u] for u in (4, 7, 10, 13, 16)}

    def last(folder):
        return load(os.path.join(folder, "checkpoint_last.pt"))  # weights_only=True

    a, b = last(str(tmp_path / "whole")), last(save)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["last_optimizer_state"], b["last_optimizer_state"]
    assert sa["xsam"] == sb["xsam"]
    assert all(torch.equal(sa["state"][i][k], sb["state"][i][k])
               for i in sa["state"] for k in ("exp_avg", "exp_avg_sq"))
    return w_lines, w_search
