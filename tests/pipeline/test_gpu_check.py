"""scripts/gpu_check.sh: its plan (--dry-run, no GPU) and every phase on the CPU (--smoke, a smoke
test: the phases run and report; no timing threshold)."""

import json
import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
PHASES = ["install", "data", "precision", "bench-fp32", "bench-fp16", "bench-amp", "bench-mlp",
          "train-fp16", "train-amp", "evaluate", "cuda-tests"]


def run(*args, timeout=60):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_dry_run_prints_every_phase_its_command_and_a_limit_within_the_budget(tmp_path):
    (tmp_path / "fairseq_fixed-0.12.3.1-cp312-cp312-manylinux_2_28_x86_64.whl").touch()
    out = run("--dry-run", "--budget", "300", "--wheels", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    limits = {}
    for line in out.stdout.splitlines():
        if line.startswith("["):
            name, _, rest = line[1:].partition("] ")
            limits[name] = float(rest.split("limit ")[1].split(" s")[0])
    assert list(limits) == PHASES
    assert abs(sum(limits.values()) - 300) <= len(PHASES)  # the budget, split (rounding)
    text = out.stdout
    assert "-m fairseq_xsam.bench.precision --device cuda" in text and "transformer_iwslt_de_en" in text
    for precision in ("fp32", "fp16", "amp"):
        assert f"-m fairseq_xsam.bench.cli --device cuda --precision {precision}" in text
    assert "-m fairseq_xsam.bench.cli --case mlp --device cuda --rounds 40" in text
    assert "--max-update 300" in text and "--expect-sentences 6750" in text
    assert "-m cuda tests/fairseq/test_gpu_path.py" in text
    assert "install_gpu.sh --target /tmp/site --wheels" in text
    assert "MISSING hydra_core, omegaconf, antlr4, bitarray, sacremoses, subword_nmt" in text


def test_bad_budget_is_refused_with_the_option_and_the_range():
    out = run("--dry-run", "--budget", "0")
    assert out.returncode == 2 and "argument --budget: 0.0 (allowed: seconds > 0)" in out.stderr


def test_smoke_runs_every_phase_on_the_cpu_and_writes_the_report(tmp_path):
    # No timing threshold here: a budget of a day, so no phase is stopped for time on a slow or
    # shared machine (how the budget is split is checked with --dry-run above; the time each
    # phase took is the script's own report)
    out = run("--smoke", "--budget", "86400", "--out", str(tmp_path / "out"), "--work",
              str(tmp_path / "work"), timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    phases = {p["name"]: p for p in results["phases"]}
    assert list(phases) == PHASES
    assert all(p["status"] == "ok" for p in phases.values()), {
        n: p["status"] for n, p in phases.items()}
    assert results["environment"]["torch"] and results["environment"]["fairseq"] == "0.12.3.1"
    f = {name: p["figures"] for name, p in phases.items()}
    assert f["data"]["pairs"] == {"train": 200, "valid": 50, "test": 100}
    # on the CPU the amp rows, bench-amp and train-amp run fairseq's --amp with its loss scaler
    # disabled and no autocast (fp32): they check that the phases run, not amp (the live scaler
    # is tested in tests/fairseq/test_gpu_path.py)
    assert {r["precision"] for r in f["precision"]["rows"]} == {"fp16", "amp"}
    for precision in ("fp32", "fp16", "amp"):
        bench = f[f"bench-{precision}"]
        assert set(bench["optimizers"]) == {"adamw", "sam", "xsam", "xsam-search-every-update"}
        assert bench["ratios"]["sam_adamw"] > 0
        # XSAM keeps one fp32 copy of the parameters more than AdamW, exactly
        assert abs(bench["xsam_extra_state_mib"] - bench["one_fp32_copy_mib"]) < 1e-9
    mlp = f["bench-mlp"]["mlps"]["2.1M"]
    assert mlp["parameters"] == 2_099_600 and mlp["xsam_sam"] > 0
    assert "| bench-mlp:" in (tmp_path / "out" / "report.md").read_text()
    for precision in ("fp16", "amp"):
        train = f[f"train-{precision}"]
        assert train["updates"] == 6 and train["finite"] and train["checkpoint"]
        assert train["alpha_searches"] >= 1
    assert f["evaluate"]["hypotheses"] == 100
    assert f["cuda-tests"]["counts"]["skipped"] >= 1  # collected, skipped without CUDA
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Ran out of time: nothing." in report and "| bench-fp16:" in report
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert "logs/train-amp.log" in names and "runs-fp16/xsam-seed1/train.log" in names
