"""README command 1's pipeline, in its quick configuration (real Multi30k data, tiny model)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "demo.py"), "--quick",
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-3000:])
    report = (out / "report.md").read_text()
    assert "| adamw |" in report and "| xsam |" in report
    assert "sacreBLEU signature:" in report
    assert (out / "valid_loss.png").stat().st_size > 1000
    for name in ("adamw", "xsam"):  # every test sentence is translated
        assert sum(1 for _ in open(out / f"hyp.{name}.en")) == 1000
    assert "XSAM alpha search at update 1" in (out / "train.xsam.log").read_text()
