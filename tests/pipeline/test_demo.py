"""README command 1's pipeline in its quick configuration: the Multi30k recipe end to end on
its tiny preset (real Multi30k data: prepare on a slice -> train 1 epoch each of adamw, sam and
xsam -> evaluate all three test sets with sharpness -> compare_bleu's report with the paired
bootstrap table and a rescoring of every hypothesis file)."""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_SETS = {"test2016_flickr": "test_2016_flickr", "test2017_flickr": "test_2017_flickr",
             "test2017_mscoco": "test_2017_mscoco"}
SUBSETS = {"test2016_flickr": "test", "test2017_flickr": "test1", "test2017_mscoco": "test2"}


def test_quick_demo_runs_the_recipe_end_to_end(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "fairseq_xsam.recipes.demo", "--quick",
                          "--threads", "1", "--out", str(out)], capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    report = (out / "report.md").read_text()
    for png in ("valid_loss.png", "bleu.png", "alpha.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    n_test = manifest["test_lines"]
    assert manifest["sizes"]["train"] == manifest["train_lines"] == 1000
    for opt in ("adamw", "sam", "xsam"):
        run_dir = out / "runs" / f"{opt}-seed1"
        bleu = json.loads((run_dir / "eval" / "bleu.json").read_text())
        assert set(bleu) == set(TEST_SETS)
        for name, stem in TEST_SETS.items():  # every sentence translated, in test order
            hyps = (run_dir / "eval" / f"{name}.hyp.en").read_text().splitlines()
            gen = (run_dir / "eval" / f"generate-{SUBSETS[name]}.txt").read_text()
            detok = dict(re.findall(r"^D-(\d+)\t[^\t]*\t(.*)$", gen, flags=re.M))
            assert len(hyps) == n_test == bleu[name]["hypotheses"] == bleu[name]["references"]
            assert hyps == [detok[str(i)] for i in range(n_test)]
            with gzip.open(ROOT / "data" / "multi30k" / f"{stem}.en.gz", "rt") as f:
                refs = f.read().splitlines()[:n_test]
            import sacrebleu

            assert bleu[name]["sacrebleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
            assert "case:mixed" in bleu[name]["signature"]
        sharp = json.loads((run_dir / "eval" / "sharpness.json").read_text())
        assert sharp["lambda_max"] > 0 and sharp["checkpoint"].endswith("checkpoint_best.pt")
        ckpts = {p.name for p in (run_dir / "checkpoints").iterdir()}
        assert ckpts == {"checkpoint_best.pt", "checkpoint_last.pt"}  # --no-epoch-checkpoints
        timing = json.loads((run_dir / "timing.json").read_text())
        assert timing["finished"] and timing["updates"] > 0 and timing["updates_per_s"] > 0
    log = (out / "runs" / "xsam-seed1" / "train.log").read_text()
    assert "XSAM alpha search at update 1" in log
    assert "## Paired bootstrap test (sacreBLEU)" in report
    assert len(re.findall(r"^\| xsam vs (sam|adamw) \| 1 \| test20", report, flags=re.M)) == 6
    assert "Rescored: 9 hypothesis files against the raw references (9 equal" in report
    # SAM and XSAM train at the rho the study chose on its validation set (committed sweep)
    for opt, rho in (("sam", "0.1"), ("xsam", "0.05")):
        command = (out / "runs" / f"{opt}-seed1" / "command.txt").read_text().split()
        assert command[command.index("--rho") + 1] == rho, opt
    study = report[report.index("## Beside it: the converged study"):]
    assert re.search(r"^\| xsam \| 0\.05 \| 39\.22 ± 0\.46 \(n=3\) \|", study, flags=re.M)
    assert "## Flatness" in report and "## Cost" in report and "Total demo wall-clock" in report
    # the recipe skips a finished run instead of training it again (the same command: the demo
    # trained xsam at the study's rho)
    again = subprocess.run(["bash", str(ROOT / "recipes" / "multi30k_de_en" / "train.sh"), "xsam",
                            "--preset", "tiny", "--cpu", "--data", str(out / "data"), "--runs",
                            str(out / "runs"), "--max-epoch", "1", "--rho", "0.05"], capture_output=True,
                           text=True, env={**os.environ, "PYTHON": sys.executable})
    assert again.returncode == 0 and "has finished (timing.json); nothing to do" in again.stdout
