"""The benchmark must not rot: a tiny CPU run produces its tables (no timing threshold)."""

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = [sys.executable, "-m", "fairseq_xsam.bench.cli"]  # xsam-bench


def corpus(tmp_path):
    """The benchmark's synthetic corpus, made here so that no temporary folder is left behind
    (without --data the script makes one of its own and keeps it)."""
    from fairseq_helpers import make_corpus

    return make_corpus(str(tmp_path / "corpus"), n_train=400)


def test_benchmark_prints_its_tables(tmp_path):
    out = subprocess.run([*BENCH,
                          "--device", "cpu", "--updates", "3", "--warmup", "1", "--threads", "1",
                          "--profile", "2", "--profile-trace", str(tmp_path),
                          "--data", corpus(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for name in ("adamw", "sam", "xsam", "xsam-search-every-update"):
        assert f"| {name} |" in text
    for ratio in ("XSAM / SAM per update, search amortised", "| SAM / AdamW |",
                  "XSAM searching every update / SAM", "XSAM vector math alone",
                  "| XSAM / SAM per round, same batch, 2 rounds without a search",
                  "| SAM / AdamW per round, same batch", "| one search's extra time / SAM",
                  "XSAM / SAM from its parts"):
        assert ratio in text, ratio
    rows = [line for line in text.splitlines() if line.startswith("| ") and "ms" not in line]
    assert all("nan" not in row for row in rows)
    for name in ("sam", "xsam"):  # the profiler pass: its table and its trace
        assert f"[profile] {name}: 2 updates" in text
        assert (tmp_path / f"{name}.json").stat().st_size > 1000
    assert "aten::" in text


def test_smoke_benchmark_without_the_every_update_search_reports_the_search_from_xsam(tmp_path):
    """A smoke test of the report, not of a measurement: without the every-update run the
    search's price is taken from XSAM's own rounds. The ratios are recomputed here from the
    script's own JSON with the script's formulas (docs/performance.md), so this checks the report's
    wiring (which rounds feed which ratio), not that the timings are right."""
    out = subprocess.run([*BENCH,
                          "--device", "cpu", "--updates", "3", "--warmup", "0", "--threads", "1",
                          "--no-search-every-update", "--json", str(tmp_path / "t.json"),
                          "--data", corpus(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| xsam-search-every-update |" not in out.stdout
    assert "(from XSAM search update)" in out.stdout
    figures = json.loads((tmp_path / "t.json").read_text())
    rounds = figures["seconds_per_round"]
    assert sorted(rounds) == ["adamw", "sam", "xsam"] and all(len(v) == 3 for v in rounds.values())
    ratios = figures["ratios"]
    assert ratios["search_every_update_sam"] is None
    # the search's price is XSAM's first (search) round over its plain rounds, per SAM update
    xsam, sam = rounds["xsam"], rounds["sam"]
    extra = xsam[0] - sorted(xsam[1:])[0] / 2 - sorted(xsam[1:])[1] / 2
    assert ratios["search_extra_sam"] == pytest.approx(extra / sorted(sam)[1])
    # from the parts: SAM's median update + XSAM's extra math + the search over an epoch
    parts = 1 + ((figures["xsam_math_ms"] - figures["sam_math_ms"]) / 1000
                 + extra / figures["epoch_updates"]) / sorted(sam)[1]
    assert figures["xsam_sam_from_parts"] == pytest.approx(parts)
    med, low, high = ratios["xsam_sam_paired"]
    assert low <= med <= high and med == pytest.approx(
        sum(x / s for x, s in zip(xsam[1:], sam[1:])) / 2)


def test_benchmark_mlp_case_prints_ratios_prediction_memory_and_traffic(tmp_path):
    out = subprocess.run([*BENCH,
                          "--case", "mlp", "--mlps", "2.1M", "--rounds", "2", "--warmup", "0",
                          "--threads", "1", "--json", str(tmp_path / "mlp.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "| 2.1M | 2,099,600 | 64 | sgd |" in text
    for column in ("SAM / base", "XSAM / SAM", "predicted XSAM / SAM", "extra memory"):
        assert column in text, column
    figures = json.loads((tmp_path / "mlp.json").read_text())["mlps"]["2.1M"]
    # XSAM keeps one parameter-sized copy of θ beyond the base optimizer, like SAM
    assert figures["extra_memory_mib"] == {"sam": 2_099_600 * 4 / 2 ** 20,
                                           "xsam": 2_099_600 * 4 / 2 ** 20}
    assert all(math.isfinite(v) and v > 0 for v in (figures["sam_base"], figures["xsam_sam"],
                                                     figures["predicted_xsam_sam"]))
    assert "| xsam (no search), --fp16 flat master |" in text
    low, med, high = sorted(figures["xsam_sam_paired"])
    assert figures["xsam_sam_paired"][0] == med and "XSAM / SAM per round" in text


def test_benchmark_rejects_an_unknown_mlp():
    out = subprocess.run([*BENCH,
                          "--case", "mlp", "--mlps", "2.1M,3M"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert "Invalid --mlps value: '2.1M,3M' (allowed: a comma-separated subset of 2.1M, 6.3M, " \
           "25.2M)" in out.stderr


# -- the traffic counter, against ops whose traffic is known ----------------------------------

def _benchmark():
    from fairseq_xsam.bench import traffic, transformer

    return SimpleNamespace(Traffic=traffic.Traffic, KINDS=traffic.KINDS,
                           traffic_table=traffic.traffic_table,
                           paired_ratio=transformer.paired_ratio)


@pytest.mark.parametrize("op,read,written,kind", [
    (lambda x, y, s: torch._foreach_norm(x), 1, 0, "reduce"),
    (lambda x, y, s: torch._foreach_mul_(x, s), 1, 1, "unary"),
    (lambda x, y, s: torch._foreach_add_(x, y, alpha=2.0), 2, 1, "binary"),
    (lambda x, y, s: torch._foreach_addcmul_(x, y, [s] * len(y)), 2, 1, "binary"),
    (lambda x, y, s: torch._foreach_addcmul_(x, y, y), 3, 1, "ternary"),
    (lambda x, y, s: torch._foreach_copy_(x, y), 1, 1, "copy"),
])
def test_traffic_counts_known_sweeps(op, read, written, kind):
    b = _benchmark()
    x, y = [torch.randn(30, 40), torch.randn(40)], [torch.randn(30, 40), torch.randn(40)]
    counter = b.Traffic(sum(t.numel() * 4 for t in x))
    with counter:
        op(x, y, torch.tensor(0.5))
    f = counter.figures()
    assert (f["read"], f["written"]) == (read, written)
    assert f["sweeps"] == {k: int(k == kind) for k in b.KINDS}
    assert f["small_ops"] == f["host_syncs"] == f["allocations"] == 0


def test_traffic_counts_small_ops_syncs_allocations_and_pauses():
    b = _benchmark()
    x = [torch.randn(1000)]
    counter = b.Traffic(4000)
    with counter:
        s = torch.tensor(2.0) * 3  # small: two ops (the constant, the product)
        s.item()  # a host sync
        torch._foreach_mul(x, s)  # a new parameter-sized list
        with counter.pause():
            torch._foreach_norm(x)
    f = counter.figures()
    assert f["host_syncs"] == 1 and f["allocations"] == 1
    assert f["small_ops"] >= 1 and f["sweeps"]["unary"] == 1 and f["sweeps"]["reduce"] == 0


def test_traffic_of_every_update_kind():
    """The sweeps of each update, counted on the real update, against the algorithm's steps
    (docs/performance.md, "Traffic model"). SAM: θ → backup (R1 W1), ‖g_0‖ (R1), θ += s·g_0
    (R2 W1), ‖g_k‖ (R1), backup → θ (R1 W1). XSAM adds: θ_k − θ in place (R2 W1), ‖θ_k − θ‖
    (R1; with ‖g_k‖ in one call), x = d − t·g_k (R2 W1), ‖x‖ (R1), g ← b·g (R1 W1),
    g += a·x (R2 W1)."""
    b = _benchmark()
    torch.manual_seed(0)
    theta = [torch.randn(200, 300), torch.randn(300), torch.randn(0), torch.randn(300, 100)]
    table = b.traffic_table(theta)
    sam, xsam = table["sam"], table["xsam (no search), fixed"]
    assert (sam["read"], sam["written"]) == (6, 3)
    assert (xsam["read"] - sam["read"], xsam["written"] - sam["written"]) == (9, 4)
    assert xsam["sweeps"] == {"reduce": 4, "unary": 1, "binary": 4, "ternary": 0, "copy": 2}
    # many CUDA tensors: each y += s·x is an in-place scaling and an add (same launches as before)
    assert table["sam, many CUDA tensors"]["sweeps"]["unary"] == 1  # ε = s·g_0 in place
    many = table["xsam (no search), many CUDA tensors"]
    assert many["sweeps"]["unary"] == 1 + 3 and many["sweeps"]["binary"] == 4
    # --fp16: every move of θ (k + 1 per update) also writes the fp16 weights (half a sweep)
    assert table["xsam (no search), --fp16 flat master"]["written"] == xsam["written"] + 1
    for label, f in table.items():
        searching = label.startswith("xsam, search")
        assert f["host_syncs"] == 0 or searching, label
        # a buffer beyond θ's copy: the probes' displacement, or msam/lsam's running sum
        expected = 1 if (searching or label.startswith(("msam", "lsam"))) else 0
        assert f["allocations"] == expected, (label, f)


def test_paired_ratio_is_the_median_of_per_round_ratios_with_an_interval_around_it():
    b = _benchmark()
    # rounds whose common noise (a slow round slows both) cancels in the ratio
    slow = [1.0, 5.0, 2.0, 9.0, 3.0, 7.0, 4.0]
    assert b.paired_ratio([1.02 * t for t in slow], slow) == pytest.approx((1.02, 1.02, 1.02))
    # the ratio of medians need not be the median of ratios
    num, den = [3.0, 1.0, 10.0], [1.0, 2.0, 4.0]  # ratios 3, 0.5, 2.5
    median, low, high = b.paired_ratio(num, den)
    assert median == 2.5 and low <= median <= high and {low, high} <= {3.0, 0.5, 2.5}
    ratios = [1.0 + 0.01 * ((7 * i) % 11 - 5) for i in range(41)]  # 0.95 .. 1.05
    median, low, high = b.paired_ratio(ratios, [1.0] * 41)
    assert median == pytest.approx(1.0) and 0.95 <= low < 1.0 < high <= 1.05
    with pytest.raises(ValueError, match="equally long"):
        b.paired_ratio([1.0], [1.0, 2.0])
