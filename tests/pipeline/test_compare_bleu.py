"""xsam-report (fairseq_xsam.report) on the fixture runs in tests/pipeline/fixtures/iwslt14_runs
(train.log and command.txt from real tiny CPU runs of train.sh; BLEU and sharpness values set by
hand, see tests/pipeline/fixtures/iwslt14_runs/README.md). Expected numbers are computed here from
the fixture files with the standard library, independently of the script's parsing."""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "iwslt14_runs"
REPORT = [sys.executable, "-m", "fairseq_xsam.report.cli"]  # xsam-report
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_script(*args):
    return subprocess.run([*REPORT, *map(str, args)], capture_output=True,
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
    compare_bleu = compare_bleu_module()
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


def test_alpha_searches_count_once_and_take_the_edge_from_the_log_note():
    """A search repeated after a resume (same update) counts once, with its last line; where
    the log has the optimizer's own edge verdict (the note and the metric
    xsam_alpha_at_edge), it is used instead of the rounded losses."""
    compare_bleu = compare_bleu_module()
    line = "| INFO | fairseq_xsam.fairseq.glue | XSAM alpha search at update {}: alpha={} " \
           "(probe losses {}){}"
    edge = " [at the grid's edge]"
    log = "\n".join([
        line.format(1, "2.00", "3.1 3.2 3.3", edge),
        line.format(262, "2.00", "4.4870 4.4870 4.4870", edge),  # rises only beyond 4 digits
        line.format(523, "1.00", "5.0 5.1 5.0", ""),
        line.format(1045, "2.00", "6.0 6.1 6.2", edge),  # killed before its checkpoint
        line.format(1045, "1.00", "6.0 6.3 6.2", ""),  # the resumed run searched again
        "| train_inner | epoch 001: 100 / 261 xsam_alpha=2, xsam_alpha_at_edge=1, num_updates=100"])
    parsed = compare_bleu.parse_train_log(log)
    assert parsed["alpha"] == [(1, 2.0), (262, 2.0), (523, 1.0), (1045, 1.0)]
    assert parsed["alpha_pinned"] == [True, True, False, False]
    # an older log (no note, no metric): the edge from the printed losses, ties to the first
    old = compare_bleu.parse_train_log(log.replace(edge, "").replace("xsam_alpha_at_edge=1, ", ""))
    assert old["alpha_pinned"] == [True, False, False, False]


def test_hypothesis_files_keep_an_empty_last_translation_and_must_match_bleu_json(tmp_path):
    compare_bleu = compare_bleu_module()
    assert compare_bleu.read_lines("a b\n\n") == ["a b", ""]  # the last translation is empty
    assert compare_bleu.read_lines("a\nb") == ["a", "b"] and compare_bleu.read_lines("") == []
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "t.hyp.en").write_text("one\ntwo\n")
    run = {"run": tmp_path, "scores": {"t": {"hypothesis_file": "t.hyp.en", "hypotheses": 2}}}
    assert compare_bleu.read_hypotheses(run, "t") == ["one", "two"]
    run["scores"]["t"]["hypotheses"] = 3
    with pytest.raises(compare_bleu.ReportError, match="t.hyp.en has 2 lines, bleu.json says 3 hypotheses"):
        compare_bleu.read_hypotheses(run, "t")


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


# ----------------------------------------------------------------------------- several test sets

WORDS = "a man woman dog cat runs sits on the in park street red blue with two young old".split()
TEST_SETS = {"test2016_flickr": 40, "test2017_mscoco": 25}


def _sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_multi_runs(root: Path):
    """Runs in the Multi30k recipe's layout: 2 seeds of adamw/sam/xsam, two test sets, raw
    references in root/refs, hypotheses = references with words dropped (more for adamw)."""
    import random

    import sacrebleu

    refs_dir = root / "refs"
    refs_dir.mkdir()
    refs = {}
    for name, n in TEST_SETS.items():
        rng = random.Random(name)
        refs[name] = [_sentence(rng, rng.randint(5, 12)) for _ in range(n)]
        stem = name.replace("test2016", "test_2016").replace("test2017", "test_2017")
        (refs_dir / f"{stem}.en").write_text("\n".join(refs[name]) + "\n")
    runs = []
    for seed in (1, 2):
        for lab, drop in (("adamw", 0.3), ("sam", 0.2), ("xsam", 0.1)):
            run = root / f"{lab}-seed{seed}"
            (run / "eval").mkdir(parents=True)
            bleu = {}
            for name, lines in refs.items():
                rng = random.Random(f"{lab}{seed}{name}")
                hyps = [" ".join(w for w in l.split() if rng.random() > drop) for l in lines]
                (run / "eval" / f"{name}.hyp.en").write_text("\n".join(hyps) + "\n")
                stem = name.replace("test2016", "test_2016").replace("test2017", "test_2017")
                score = sacrebleu.corpus_bleu(hyps, [lines])
                bleu[name] = {"sacrebleu": round(score.score, 2), "signature": "sig",
                              "tokenized_bleu": round(score.score - 1, 2),
                              "hypotheses": len(hyps), "references": len(lines),
                              "hypothesis_file": f"{name}.hyp.en",
                              "reference_file": f"data/multi30k/{stem}.en"}
            (run / "eval" / "bleu.json").write_text(json.dumps(bleu))
            log = [f"epoch 001 | valid on 'valid' subset | loss {5 - drop} | num_updates 10",
                   f"| train | epoch 001 | loss 5 | num_updates 10 | train_wall {10 * (1 + seed)}"]
            if lab == "xsam":
                log += ["XSAM alpha search at update 1: alpha=2.00 (probe losses 1.0 2.0 nan "
                        "3.0)", "XSAM alpha search at update 11: alpha=0.50 (probe losses 1.0 "
                        "4.0 2.0 4.0)"]
            (run / "train.log").write_text("\n".join(log) + "\n")
            (run / "command.txt").write_text(f"train {lab} --seed {seed}\n")
            runs.append(run)
    return runs, refs_dir


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    runs, refs = make_multi_runs(root)
    result = run_script(*runs, "--out", root / "out", "--refs", refs, "--rescore",
                        "--bootstrap", "200")
    assert result.returncode == 0, result.stderr[-3000:]
    return runs, refs, (root / "out" / "report.md").read_text(), root


def test_multi_test_set_columns_are_mean_and_sample_std(multi):
    runs, _, text, _ = multi
    for key, header in (("sacrebleu", "## sacreBLEU"), ("tokenized_bleu", "## tokenized")):
        section = text[text.index(header):]
        rows = table_rows(section, "| optimizer | test2016_flickr")
        for lab in ("adamw", "sam", "xsam"):
            for col, name in enumerate(TEST_SETS, 1):
                vals = [json.loads((r / "eval" / "bleu.json").read_text())[name][key]
                        for r in runs if r.name.startswith(lab + "-")]
                assert rows[lab][col] == (f"{statistics.mean(vals):.2f} ± "
                                          f"{statistics.stdev(vals):.2f} (n=2)")


def test_paired_bootstrap_equals_sacrebleu_cli(multi):
    runs, refs, _, root = multi
    result = run_script(*runs, "--out", root / "out1000", "--refs", refs)
    text = (root / "out1000" / "report.md").read_text()
    row = next(l for l in text.splitlines() if l.startswith("| xsam vs sam | 2 | test2017_mscoco"))
    p_report = float(row.strip("|").split("|")[-1])
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(refs / "test_2017_mscoco.en"),
                          "-i", str(root / "sam-seed2" / "eval" / "test2017_mscoco.hyp.en"),
                          str(root / "xsam-seed2" / "eval" / "test2017_mscoco.hyp.en"),
                          "--paired-bs", "-f", "text"], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    m = re.search(r"xsam-seed2.*?\(p = ([0-9.]+)\)", cli.stdout.replace("\n", " ")) or \
        re.search(r"\(p = ([0-9.]+)\)", cli.stdout)
    assert m, cli.stdout
    assert p_report == pytest.approx(float(m.group(1)), abs=1e-4)
    assert result.returncode == 0
    pairs = {tuple(l.split("|")[1:4]) for l in text.splitlines() if l.startswith("| xsam vs")}
    assert len(pairs) == 2 * 2 * 2  # (xsam vs sam, xsam vs adamw) x 2 seeds x 2 test sets


def test_edge_pinned_searches_cost_and_rescore(multi):
    runs, refs, text, root = multi
    # probes 1 2 nan 3: the finite maximum is the last probe; 1 4 2 4: the first maximum wins
    assert "- xsam-seed1: 1: 2.00*, 11: 0.50" in text and "2 of 4 searches" in text
    assert compare_bleu_module().edge_pinned([1.0, float("inf"), 0.5]) is False
    rows = table_rows(text[text.index("## Cost"):], "| optimizer | runs")
    assert rows["adamw"][4] == f"{statistics.mean([10 / 20, 10 / 30]):.2f} ± " \
                               f"{statistics.stdev([10 / 20, 10 / 30]):.2f}"
    assert "Rescored: 12 hypothesis files against the raw references (12 equal" in text
    hyp = root / "xsam-seed1" / "eval" / "test2016_flickr.hyp.en"
    saved = hyp.read_text()
    hyp.write_text(saved.replace("a", "the", 3))
    try:
        bad = run_script(*runs, "--rescore", "--refs", refs)
    finally:
        hyp.write_text(saved)
    assert bad.returncode != 0 and "1 of 12 hypothesis files do not reproduce" in bad.stderr
    assert "xsam-seed1 test2016_flickr" in bad.stdout and "DIFFERENT" in bad.stdout


def test_an_xsam_variant_is_tested_against_default_xsam(multi, tmp_path):
    """A run labelled xsam_<name> (XSAM's variants) gets its own paired test against xsam,
    seed by seed; its Δ is sacreBLEU's corpus score difference of the two hypothesis files."""
    import shutil

    import sacrebleu

    runs, refs, _, root = multi
    variant = tmp_path / "xsam_auto-seed1"
    shutil.copytree(root / "xsam-seed1", variant)
    shutil.copytree(root / "sam-seed1" / "eval", variant / "eval", dirs_exist_ok=True)
    result = run_script(*runs, variant, "--out", tmp_path / "out", "--refs", refs,
                        "--bootstrap", "100")
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "out" / "report.md").read_text()
    rows = [l.strip("|").split("|") for l in text.splitlines()
            if l.startswith("| xsam_auto vs xsam |")]
    assert [r[1].strip() for r in rows] == ["1", "1"]  # seed 1 only, both test sets
    for r in rows:
        name = r[2].strip()
        stem = name.replace("test2016", "test_2016").replace("test2017", "test_2017")
        ref = (refs / f"{stem}.en").read_text().splitlines()
        def score(run, name=name, ref=ref):
            return sacrebleu.corpus_bleu(
                (run / "eval" / f"{name}.hyp.en").read_text().splitlines(), [ref]).score
        assert float(r[5]) == pytest.approx(score(root / "sam-seed1") - score(root / "xsam-seed1"),
                                            abs=0.006)
    assert compare_bleu_module().pairs({"sam", "xsam", "xsam_probe1", "xsam_auto"})[2:] == \
        [("xsam_auto", "xsam"), ("xsam_probe1", "xsam")]
    assert compare_bleu_module().pairs({"adamw", "fixed_a05", "xsam_auto", "fixed", "lsam"}) == \
        [("xsam", "sam"), ("xsam", "adamw"), ("xsam_auto", "xsam"), ("fixed", "xsam"),
         ("fixed_a05", "xsam")]
    # a SAM variant is tested against SAM, and the XSAM variant of the same name against it
    assert compare_bleu_module().pairs({"sam", "xsam", "sam_k3", "xsam_k3", "sam_wd"})[2:] == \
        [("xsam_k3", "xsam"), ("sam_k3", "sam"), ("sam_wd", "sam"), ("xsam_k3", "sam_k3")]


def compare_bleu_module():
    from fairseq_xsam import report

    return report


def test_cost_rows_keep_runs_of_another_thread_count_or_day_apart():
    cost_rows = compare_bleu_module().cost_rows
    timing = lambda ups, threads=None, day="2026-12-02": {  # noqa: E731
        "timing": {"wall_s": 600, "updates": 100, "updates_per_s": ups, "day": day,
                   **({"threads": threads} if threads else {})}}
    groups = {"adamw": [timing(1.5), timing(1.7), timing(3.0, threads=2)],
              "sam": [timing(0.8, threads=1), timing(0.9, threads=1)], "xsam": [{"timing": None}],
              "fixed": [timing(0.7), timing(0.8, threads=1)],
              "msam": [timing(0.8, threads=1), timing(1.2, threads=1, day="2026-12-05")]}
    rows = {r[0]: r for r in cost_rows(groups)}
    assert list(rows) == ["adamw", "adamw (2 threads)", "sam", "xsam", "fixed",
                          "fixed (1 thread)", "msam (2026-12-02)", "msam (2026-12-05)"]
    assert rows["adamw"][1:4] == (2, [10.0, 10.0], [1.5, 1.7])
    assert rows["adamw (2 threads)"][1:4] == (1, [10.0], [3.0])
    assert rows["sam"][1:4] == (2, [10.0, 10.0], [0.8, 0.9])  # one thread count: one plain row
    assert rows["xsam"][1:] == (0, [], [], [], None)
    assert rows["fixed (1 thread)"][1:4] == (1, [10.0], [0.8])
    assert rows["msam (2026-12-05)"][1:] == (1, [10.0], [1.2], [100], "2026-12-05")


def test_cost_ratio_divides_by_adamw_of_the_same_day(multi, tmp_path):
    """Every session runs on a machine of its own: a run finished on another day gets its own
    cost row, and 'time per update / adamw' divides by the AdamW speed of that day, or says
    '–' where no AdamW run finished that day (no ratio across machines)."""
    import shutil

    runs, refs, _, root = multi
    picked = []
    for name, day, wall in (("adamw-seed1", "2026-12-02", 20), ("sam-seed1", "2026-12-02", 40),
                            ("sam-seed2", "2026-12-05", 30)):
        run = tmp_path / name
        shutil.copytree(root / name, run)
        log = (run / "train.log").read_text().replace("train_wall 20", f"train_wall {wall}")
        (run / "train.log").write_text("".join(f"{day} 10:00:0{i} | INFO | {line}\n"
                                               for i, line in enumerate(log.splitlines())))
        picked.append(run)
    result = run_script(*picked, "--out", tmp_path / "out", "--refs", refs, "--bootstrap", "50")
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "out" / "report.md").read_text()
    rows = table_rows(text[text.index("## Cost"):], "| optimizer | runs")
    assert set(rows) == {"adamw", "sam (2026-12-02)", "sam (2026-12-05)"}
    assert rows["adamw"][4] == "0.50" and rows["adamw"][5] == "1.00"       # 10 updates / 20 s
    assert rows["sam (2026-12-02)"][4] == "0.25" and rows["sam (2026-12-02)"][5] == "2.00"
    assert rows["sam (2026-12-05)"][4] == "0.33" and rows["sam (2026-12-05)"][5] == "–"
