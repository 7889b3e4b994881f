"""The Trainer recipe (xsam-hf-multi30k) end to end on a slice of the real Multi30k data, read
back by xsam-report; its loss against PyTorch's label-smoothed cross-entropy."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from fairseq_xsam.recipes import hf_multi30k as recipe  # noqa: E402
from fairseq_xsam.report import cli as report_cli  # noqa: E402
from fairseq_xsam.report.runs import load_run  # noqa: E402


def test_loss_is_pytorchs_label_smoothed_cross_entropy_per_update_token():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    labels[0, 3:] = -100
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 11), labels.reshape(-1), ignore_index=-100, label_smoothing=0.1,
        reduction="sum") / 40
    got = recipe.label_smoothed_loss(0.1)({"logits": logits}, labels, num_items_in_batch=40)
    assert torch.allclose(got, expected, rtol=1e-6)
    mean = recipe.label_smoothed_loss(0.1)({"logits": logits}, labels)
    assert torch.allclose(mean, expected * 40 / 13, rtol=1e-6)  # 13 target tokens


def test_a_short_xsam_run_is_scored_and_read_by_the_report(tmp_path, capsys):
    args = ["--opt", "xsam", "--size", "quick", "--train-lines", "200", "--test-lines", "12",
            "--epochs", "2", "--beam", "2", "--batch", "50", "--log-every", "2",
            "--runs", str(tmp_path / "runs"), "--work", str(tmp_path / "work")]
    assert recipe.main(args) == 0
    run = tmp_path / "runs" / "xsam-seed1"
    bleu = json.loads((run / "eval" / "bleu.json").read_text())
    assert list(bleu) == ["test2016_flickr", "test2017_flickr", "test2017_mscoco"]
    assert all(b["hypotheses"] == b["references"] == 12 for b in bleu.values())
    record = json.loads((run / "run.json").read_text())["settings"]
    assert (record["rho"], record["probe_rho"], record["sam_variant"]) == (0.05, 0.15, "xsam")
    info = load_run(run, allow_missing=False)
    assert sorted(info["valid"]) == [1, 2] and info["updates"] == 8  # 200 / 50 x 2 epochs
    assert [u for u, _ in info["alpha"]] == [1, 5]  # the first update of each epoch
    assert all(p is not None for p in info["alpha_pinned"])
    assert info["timing"]["updates"] == 8 and info["timing"]["updates_per_s"] > 0
    out = tmp_path / "report"
    assert report_cli.main([str(run), "--rescore", "--out", str(out)]) == 0
    assert "3 equal to bleu.json" in (out / "report.md").read_text()
    speed = info["timing"]["updates_per_s"]
    assert recipe.main(args) == 0  # run again: resumes from its last checkpoint, trains nothing
    assert json.loads((run / "timing.json").read_text())["resumed"] is True
    again = load_run(run, allow_missing=False)
    assert again["updates"] == 8 and again["timing"]["processes"] == 2
    assert again["timing"]["updates_per_s"] <= speed  # the second call's time adds up


@pytest.mark.parametrize("argv,message", [
    (["--opt", "xsam", "--epochs", "0"], "argument --epochs: 0.0 (allowed: > 0)"),
    (["--opt", "adamw", "--rho", "0.1"], "argument --rho: AdamW has no rho"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        recipe.main(argv)
    assert message in capsys.readouterr().err
