"""The benchmark must not rot: a tiny CPU run produces its tables (no timing threshold)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_prints_its_tables(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                          "--device", "cpu", "--updates", "3", "--warmup", "1", "--threads", "1",
                          "--profile", "2", "--profile-trace", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for name in ("adamw", "sam", "xsam", "xsam-search-every-update"):
        assert f"| {name} |" in text
    for ratio in ("XSAM / SAM per update, search amortised", "| SAM / AdamW |",
                  "XSAM searching every update / SAM", "XSAM vector math alone"):
        assert ratio in text, ratio
    rows = [line for line in text.splitlines() if line.startswith("| ") and "ms" not in line]
    assert all("nan" not in row for row in rows)
    for name in ("sam", "xsam"):  # the profiler pass: its table and its trace
        assert f"[profile] {name}: 2 updates" in text
        assert (tmp_path / f"{name}.json").stat().st_size > 1000
    assert "aten::" in text
