"""The committed evidence must reproduce: every hypothesis file under docs/results/*/runs/ scores,
with sacreBLEU against the raw references in data/, exactly what its bleu.json reports, and every
source sentence of the test set has its translation. New runs of the Multi30k study are covered
as soon as they are committed."""

import gzip
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"test2016_flickr": 1000, "test2017_flickr": 1000, "test2017_mscoco": 461}


def committed_scores():
    for bleu in sorted(ROOT.glob("docs/results/*/runs/*/eval/bleu.json")):
        for name, score in json.loads(bleu.read_text()).items():
            if "reference_file" in score:
                yield pytest.param(bleu.parent, name, score,
                                   id=f"{bleu.relative_to(ROOT / 'docs/results').parts[0]}/"
                                      f"{bleu.parts[-3]}/{name}")


SCORES = list(committed_scores())


def test_the_demo_and_the_study_have_committed_scores():
    runs = {p.values[0].parent.name for p in SCORES}
    assert {"adamw-seed1", "sam-seed1", "xsam-seed1"} <= runs


@pytest.mark.parametrize("eval_dir,name,score", SCORES)
def test_committed_hypotheses_rescore_to_the_reported_bleu(eval_dir, name, score):
    from sacrebleu.metrics import BLEU

    with gzip.open(ROOT / score["reference_file"], "rt", encoding="utf-8") as f:
        refs = f.read().rstrip("\n").split("\n")
    hyps = (eval_dir / score["hypothesis_file"]).read_text(encoding="utf-8")
    hyps = hyps.rstrip("\n").split("\n")
    # one translation per source sentence, in test order (an empty line is a valid translation)
    assert len(refs) == SIZES[name] == len(hyps) == score["hypotheses"] == score["references"]
    bleu = BLEU()
    again = bleu.corpus_score(hyps, [refs])
    assert round(again.score, 2) == score["sacrebleu"]
    assert str(bleu.get_signature()).split("|version:")[0] == score["signature"].split(
        "|version:")[0]


FIDELITY = ROOT / "docs/results/multi30k/fidelity"


def _close(a, b):
    """Equal up to float rounding; NaN equals NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12, abs=1e-15, nan_ok=True)
    return a == b


def test_committed_fidelity_summaries_are_recomputed_from_their_batches():
    """Every committed measurement's summary, and summary.json (what the report and the plot read),
    follow from the per-batch numbers: a re-measured or added checkpoint without a regenerated
    summary fails here."""
    from fairseq_xsam.lab.fidelity_cli import summary_of

    records = {p.stem: json.loads(p.read_text()) for p in FIDELITY.glob("*-epoch*.json")}
    assert len(records) >= 7
    for label, rec in records.items():
        assert rec["label"] == label and len(rec["batches"]) == rec["settings"]["batches"]
        assert _close(summary_of(rec["batches"], rec["settings"]["radii"]), rec["summary"]), label
    table = json.loads((FIDELITY / "summary.json").read_text())
    assert sorted(row["label"] for row in table) == sorted(records)
    for row in table:
        rec = records[row["label"]]
        assert row["epoch"] == rec["epoch"] and _close(row["summary"], rec["summary"])
