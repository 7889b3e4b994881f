"""README command 1's pipeline, in its quick configuration (real Multi30k data, tiny model)."""

import json
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
    assert "| adamw | 1 |" in report and "| xsam | 1 |" in report  # the comparison table
    assert "## sacreBLEU signature" in report and "Total demo wall-clock" in report
    for png in ("valid_loss.png", "bleu.png", "alpha.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    for name in ("adamw", "xsam"):  # every test sentence is translated and scored
        run_dir = out / "runs" / f"{name}-seed1"
        assert sum(1 for _ in open(run_dir / "eval" / "hyp.en")) == 1000
        bleu = json.loads((run_dir / "eval" / "bleu.json").read_text())
        assert bleu["hypotheses"] == bleu["references"] == 1000
        assert f"| {name}-seed1 | {bleu['tokenized_bleu']} | {bleu['sacrebleu']} | 1000 |" \
            in report
    assert "XSAM alpha search at update 1" in (out / "runs" / "xsam-seed1" / "train.log").read_text()
