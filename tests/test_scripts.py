"""Scripts that draw figures produce them (the behaviour itself is tested in test_optim)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_toy2d_writes_the_trajectory_figure(tmp_path):
    out = tmp_path / "toy.png"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "toy2d.py"), "--out",
                          str(out), "--steps", "60"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.stat().st_size > 10_000
    assert all(f"{name}: ends at" in run.stdout for name in ("SGD", "SAM", "XSAM"))
