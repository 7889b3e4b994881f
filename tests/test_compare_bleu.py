"""scripts/compare_bleu.py on the fixture runs in tests/fixtures/iwslt14_runs (train.log and
command.txt from real tiny CPU runs of train.sh; BLEU and sharpness values set by hand, see
tests/fixtures/iwslt14_runs/README.md). Expected numbers are computed here from the fixture files
with the standard library, independently of the script's parsing."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "iwslt14_runs"
SCRIPT = ROOT / "scripts" / "compare_bleu.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True)


def fixture_runs():
    return sorted(p for p in FIXTURES.iterdir() if p.is_dir())


def table_rows(report: str, header_start: str) -> dict:
    """{first cell: cells} of the markdown table whose header row starts with header_start."""
    lines = report.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(header_start))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = run_script(*fixture_runs(), "--out", out)
    assert result.returncode == 0, result.stderr
    return out, (out / "report.md").read_text()


def test_bleu_table_matches_statistics_of_the_fixture_files(report):
    _, text = report
    by_label = {}
    for run in fixture_runs():
        label = run.name.split("-seed")[0]
        by_label.setdefault(label, []).append(json.loads((run / "eval" / "bleu.json").read_text()))
    rows = table_rows(text, "| optimizer | n | tokenized BLEU")
    assert set(rows) == set(by_label) == {"adamw", "sam", "xsam"}
    mean = {lab: {k: statistics.mean(b[k] for b in bs) for k in ("tokenized_bleu", "sacrebleu")}
            for lab, bs in by_label.items()}
    for lab, bs in by_label.items():
        cells = rows[lab]
        assert int(cells[1]) == len(bs) == 2
        for col, key in ((2, "tokenized_bleu"), (5, "sacrebleu")):
            values = [b[key] for b in bs]
            assert cells[col] == f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
            for offset, base in ((1, "adamw"), (2, "sam")):
                want = "–" if lab == base else f"{mean[lab][key] - mean[base][key]:+.2f}"
                assert cells[col + offset] == want, (lab, key, base)
    # the number of updates: the last num_updates fairseq logged, read here with a plain search
    for run in fixture_runs():
        last = re.findall(r"num_updates (\d+)", (run / "train.log").read_text())[-1]
        assert table_rows(text, "| run |")[run.name][4] == last


def test_flatness_table_and_signature(report):
    _, text = report
    rows = table_rows(text, "| optimizer | tokenized BLEU | lambda_max")
    for lab in ("adamw", "sam", "xsam"):
        vals = [json.loads((r / "eval" / "sharpness.json").read_text())["lambda_max"]
                for r in fixture_runs() if r.name.startswith(lab + "-seed")]
        assert rows[lab][2] == f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"
    sig = json.loads((fixture_runs()[0] / "eval" / "bleu.json").read_text())
    assert f"`{sig['sacrebleu_signature']}`" in text
    for run in fixture_runs():  # the exact commands
        assert (run / "command.txt").read_text().strip() in text


def test_alpha_searches_are_read_from_the_glue_log_lines(report):
    _, text = report
    for run in fixture_runs():
        found = re.findall(r"XSAM alpha search at update (\d+): alpha=([0-9.]+)",
                           (run / "train.log").read_text())
        line = next((l for l in text.splitlines() if l.startswith(f"- {run.name}: ")), None)
        if run.name.startswith("xsam"):
            assert found and line == f"- {run.name}: " + ", ".join(
                f"update {u}: {float(a):.2f}" for u, a in found)
        else:
            assert not found and line is None


def test_plots_are_png_files(report):
    out, text = report
    for name in ("valid_loss.png", "bleu.png", "alpha.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, name
        assert f"]({name})" in text


def test_valid_loss_parsing_matches_the_log():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import compare_bleu
    finally:
        sys.path.pop(0)
    text = (fixture_runs()[0] / "train.log").read_text()
    parsed = compare_bleu.parse_train_log(text)
    lines = [l for l in text.splitlines() if "| valid | epoch" in l]
    assert len(parsed["valid"]) == len(lines) > 1
    first = lines[0]
    assert parsed["valid"][1]["loss"] == float(re.search(r"\| loss ([0-9.]+)", first).group(1))
    assert parsed["valid"][1]["bleu"] == float(re.search(r"\| bleu ([0-9.]+)", first).group(1))
    # hydra's log format (fairseq-hydra-train) carries the same message
    hydra_line = "[2026-01-01 00:00:00,000][valid][INFO] - epoch 007 | valid on 'valid' subset " \
                 "| loss 3.5 | nll_loss 2.1 | bleu 30.2 | num_updates 70"
    assert compare_bleu.parse_train_log(hydra_line)["valid"] == {
        7: {"loss": 3.5, "nll_loss": 2.1, "bleu": 30.2, "num_updates": 70.0}}


def test_missing_evaluation_is_a_clear_error_or_listed(tmp_path):
    runs = []
    for run in fixture_runs()[:3]:
        shutil.copytree(run, tmp_path / run.name)
        runs.append(tmp_path / run.name)
    shutil.rmtree(runs[1] / "eval")
    result = run_script(*runs, "--out", tmp_path / "out")
    assert result.returncode != 0
    assert f"{runs[1]}: no eval/bleu.json: evaluate it first" in result.stderr
    result = run_script(*runs, "--out", tmp_path / "out", "--allow-missing")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    assert f"left out of the tables above: {runs[1].name}" in text
    bad = run_script(tmp_path / "out", "--out", tmp_path / "o2")
    assert bad.returncode != 0 and "must be named <OPT>-seed<SEED>" in bad.stderr


def test_single_seed_shows_no_std(tmp_path):
    run = fixture_runs()[0]
    shutil.copytree(run, tmp_path / run.name)
    assert run_script(tmp_path / run.name, "--out", tmp_path / "out").returncode == 0
    row = table_rows((tmp_path / "out" / "report.md").read_text(),
                     "| optimizer | n |")[run.name.split("-seed")[0]]
    value = json.loads((run / "eval" / "bleu.json").read_text())["tokenized_bleu"]
    assert row[1] == "1" and row[2] == f"{value:.2f}"
