"""The 2-process CPU runs of test_ddp.py and test_alpha_search.py: ddp_worker.py (next to
this file) under ``torchrun --standalone`` with gloo, or as one plain fairseq-train process,
and the check that two ranks agree."""

import json
import os
import subprocess
import sys

from fairseq_helpers import TINY_ARCH

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")


def fairseq_command(data, save_dir, extra):
    return [data, "--user-dir", os.path.join(ROOT, "fairseq_xsam"), "--task", "translation",
            "--cpu", *TINY_ARCH, "--optimizer", "xsam_adamw", "--lr", "3e-3",
            "--max-tokens", "330", "--save-dir", str(save_dir), "--no-save",
            "--no-progress-bar", "--num-workers", "0", "--seed", "5", *extra]


def run_ranks(tmp_path, data, extra, nproc=2, dump_update=0, env_extra=None, check=True):
    """ddp_worker.py under torchrun with ``nproc`` ranks (gloo), or, for nproc=0, as one
    plain fairseq-train process. Returns (folder, [records of each rank]) or, unchecked, the
    completed process."""
    out = tmp_path / ("ranks" if nproc else "single")
    out.mkdir()
    args = fairseq_command(data, tmp_path / "ck", extra)
    if nproc:
        # --log-dir: torchrun's own logs go under tmp_path, not into a new /tmp/torchelastic_*
        cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone",
               "--nproc_per_node", str(nproc), "--log-dir", str(tmp_path / "torchrun"), WORKER,
               *args, "--distributed-backend", "gloo"]
    else:
        cmd = [sys.executable, WORKER, *args]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    env.update(XSAM_DDP_OUT=str(out), XSAM_DDP_DUMP=str(dump_update), OMP_NUM_THREADS="1",
               **(env_extra or {}))
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    if not check:
        return run
    assert run.returncode == 0, run.stderr[-4000:]
    return out, [json.load(open(out / f"rank{r}.json")) for r in range(max(nproc, 1))]


def run_two_ranks(tmp_path, data, extra, dump_update=0, env_extra=None, check=True):
    """Two ranks, each with ``--update-freq 2`` unless ``extra`` says otherwise."""
    return run_ranks(tmp_path, data, ["--update-freq", "2", *extra], 2, dump_update, env_extra,
                     check)


def assert_ranks_agree(r0, r1, searches):
    assert len(r0["digest"]) == len(r1["digest"]) >= 3 * searches - 2
    # uneven shards: some update had a dummy batch (what its replay computes is compared with one
    # process in test_synchronised_ranks_equal_one_process_with_update_freq_two)
    assert r0["dummy"] + r1["dummy"] > 0
    assert r0["alpha"] == r1["alpha"]
    assert r0["digest"] == r1["digest"]
    assert len(set(r0["digest"])) == len(r0["digest"])  # the parameters really moved
