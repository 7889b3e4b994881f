"""Scripts that draw figures produce them (the behaviour itself is tested in test_optim)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_toy2d_writes_the_trajectory_figure(tmp_path):
    out = tmp_path / "toy.png"
    run = subprocess.run([sys.executable, "-m", "fairseq_xsam.lab.toy2d", "--out",
                          str(out), "--steps", "60"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert out.stat().st_size > 10_000
    assert all(f"{name}: ends at" in run.stdout for name in ("SGD", "SAM", "XSAM"))


def test_smoke_precision_check_writes_its_fp16_and_amp_rows(tmp_path):
    """A smoke test of xsam-precision on CPU: it runs and writes its table. Two of
    its columns check nothing on CPU, and the assertions say so: fairseq disables --amp's loss
    scaler and autocast off CUDA, so the amp rows are fp32 exactly (scale None, differences 0;
    the live scaler is tested in test_gpu_path.py, test_amp_with_a_live_loss_scale_matches_fp32).
    The fp16 rows are a real comparison (fp16 passes, loss scale 128); α* is compared with an
    interior maximum in test_fairseq.py, test_fp16_master_weights_match_fp32."""
    from fairseq_helpers import make_corpus

    data = make_corpus(str(tmp_path / "corpus"))  # not the script's own temporary folder
    out = tmp_path / "precision.md"
    run = subprocess.run([sys.executable, "-m", "fairseq_xsam.bench.precision",
                          "--device", "cpu", "--updates", "2", "--data", data, "--out", str(out)],
                         capture_output=True, text=True, timeout=900)  # a hang guard, not a speed target
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split(" | ") for line in out.read_text().splitlines()
            if line.startswith("| fp16 | ") or line.startswith("| amp | ")]
    per_update = [r for r in rows if r[1] in ("1", "2")]
    assert len(per_update) == 4
    for r in per_update:
        alpha, alpha32 = r[3].split(" (")
        assert alpha == alpha32.rstrip(")")  # the same α* as fp32
        assert float(r[5]) < 0.5  # the plane angle φ within half a degree (0 for amp on CPU)
        if r[0] == "| amp":  # CPU: no loss scaler, no autocast: fp32 exactly, no amp code run
            assert r[2] == "None"
            assert float(r[4]) == 0.0 and float(r[6].rstrip(" |")) == 0.0
        else:  # fp16 arithmetic in the passes, fp32 vector math
            assert r[2] != "None"  # fp16's loss scale
            assert 0.0 < float(r[4]) < 1e-2 and 0.0 < float(r[6].rstrip(" |")) < 5e-2
    delta = {line.split(" | ")[0]: line.rstrip(" |").rsplit("| ", 1)[-1]
             for line in out.read_text().splitlines() if "| Δθ after 2 |" in line}
    assert delta["| amp"] == "0.00e+00 (parameter change; 0 skipped)"
    assert delta["| fp16"].endswith("(parameter change; 0 skipped)")
    assert 0.0 < float(delta["| fp16"].split()[0]) < 0.5
