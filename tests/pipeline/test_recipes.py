"""The IWSLT'14 recipes (recipes/iwslt14_de_en): train.sh's command against fairseq's README and
against the hydra configs (parsed by fairseq itself), option errors, checkpoint averaging, and
tiny real CPU runs of train.sh, evaluate.sh and fairseq-hydra-train."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from fairseq_helpers import TINY_ARCH, make_corpus
from recipe_configs import PYTHON, RECIPE_DIR, ROOT, differences, dry_run, fairseq_cfg, hydra_cfg

from fairseq_xsam.recipes import iwslt14 as recipe  # noqa: E402

# fairseq examples/translation/README.md, "IWSLT'14 German to English (Transformer)", verbatim.
README_COMMAND = """fairseq-train \
    data-bin/iwslt14.tokenized.de-en \
    --arch transformer_iwslt_de_en --share-decoder-input-output-embed \
    --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0 \
    --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000 \
    --dropout 0.3 --weight-decay 0.0001 \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
    --max-tokens 4096"""
# hydra 1.3 warns about fairseq's schema matching (fairseq-hydra-train does the same)
pytestmark = [pytest.mark.filterwarnings(r"ignore:\s*'[^']*' is validated against ConfigStore"),
              pytest.mark.filterwarnings(r"ignore:\s*The strict flag in the compose API")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("iwslt_recipe")), n_train=200, n_valid=20)


def test_adamw_command_is_fairseqs_readme_command():
    ours = fairseq_cfg(dry_run("adamw"))
    readme = fairseq_cfg(README_COMMAND)
    for group, keys in {
            "optimizer": ("_name", "adam_betas", "weight_decay"),
            "optimization": ("clip_norm", "lr"),
            "lr_scheduler": ("_name", "warmup_updates"),
            "criterion": ("_name", "label_smoothing"),
            "dataset": ("max_tokens",), "task": ("_name",)}.items():
        for key in keys:
            assert ours[group][key] == readme[group][key], (group, key)
    # the architecture as fairseq resolves it (transformer_iwslt_de_en's dimensions)
    for key in ("arch", "dropout", "share_decoder_input_output_embed", "encoder_embed_dim",
                "encoder_ffn_embed_dim", "encoder_layers", "encoder_attention_heads",
                "decoder_ffn_embed_dim", "decoder_layers"):
        assert ours["model"][key] == readme["model"][key], key
    assert readme["model"]["encoder_ffn_embed_dim"] == 1024  # the iwslt arch, not the base one


@pytest.mark.parametrize("opt", recipe.OPTIMIZERS)
def test_train_command_and_hydra_config_agree(opt, monkeypatch):
    monkeypatch.chdir(ROOT)  # the yaml's user_dir default is relative to the repository root
    alpha = ["--alpha", "0.5"] if opt == "fixed" else []
    cli = fairseq_cfg(dry_run(opt, "--data", "data-bin/x", *alpha))
    hyd = hydra_cfg(recipe.CONFIG_DIR, opt, ["task.data=data-bin/x",
                                             f"checkpoint.save_dir={cli['checkpoint']['save_dir']}"]
                    + (["+optimizer.alpha=0.5"] if opt == "fixed" else []))
    assert differences(cli, hyd) == []
    # and the settings are the intended ones, not merely equal
    opt_cfg = cli["optimizer"]
    if opt == "adamw":
        assert opt_cfg["_name"] == "adam"
    else:
        assert (opt_cfg["_name"], opt_cfg["sam_variant"], opt_cfg["rho"],
                opt_cfg["probe_rho"]) == ("xsam_adamw", opt, 0.15, 0.45)
        assert opt_cfg["alpha_search"] == ("epoch" if opt == "xsam" else None)
        assert opt_cfg["alpha"] == (0.5 if opt == "fixed" else 1.0)
    assert cli["common"]["fp16"] is True and cli["common"]["seed"] == 1
    assert cli["model"]["arch"] == hyd["model"]["_name"] == "transformer_iwslt_de_en"


def test_drift_check_catches_an_edited_config(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    text = (recipe.CONFIG_DIR / "xsam.yaml").read_text()
    assert "probe_rho: 0.45" in text and "- 0.0005" in text
    (tmp_path / "xsam.yaml").write_text(text.replace("probe_rho: 0.45", "probe_rho: 0.3")
                                        .replace("- 0.0005", "- 0.001"))
    cli = fairseq_cfg(dry_run("xsam", "--data", "d"))
    hyd = hydra_cfg(tmp_path, "xsam", ["task.data=d",
                                       f"checkpoint.save_dir={cli['checkpoint']['save_dir']}"])
    found = {(g, k) for g, k, _, _ in differences(cli, hyd)}
    assert {("optimizer", "probe_rho"), ("optimization", "lr"), ("optimizer", "lr")} <= found


def test_config_files_are_generated_from_the_table():
    subprocess.run([PYTHON, str(RECIPE_DIR / "recipe.py"), "configs", "--check"], check=True)
    assert sorted(p.stem for p in recipe.CONFIG_DIR.glob("*.yaml")) == sorted(recipe.OPTIMIZERS)


def test_dry_run_layout_seed_cpu_and_passthrough():
    line = dry_run("sam", "7", "--cpu", "--runs", "R", "--max-epoch", "3", "--rho", "0.05",
                   "--", "--max-update", "10")
    words = shlex.split(line)
    assert words[words.index("--save-dir") + 1] == "R/sam-seed7/checkpoints"
    assert words[-2:] == ["--max-update", "10"]  # passed through, last
    for flag, value in (("--seed", "7"), ("--max-epoch", "3"), ("--rho", "0.05"),
                        ("--sam-variant", "sam"), ("--optimizer", "xsam_adamw")):
        assert words[words.index(flag) + 1] == value
    assert "--cpu" in words and "--fp16" not in words
    assert "--alpha-search" not in words  # only xsam searches
    assert "--fp16" not in shlex.split(dry_run("xsam", "--no-fp16"))


BAD_TRAIN = [
    (["bogus"], "argument OPT: invalid choice: 'bogus'"),
    (["fixed"], "OPT fixed needs --alpha"),
    (["fixed", "--alpha", "2.5"], "argument --alpha: 2.5 (allowed: 0 <= alpha <= 2)"),
    (["xsam", "--rho", "0"], "argument --rho: 0 (allowed: a number > 0)"),
    (["xsam", "--probe-rho", "-1"], "argument --probe-rho: -1 (allowed: a number > 0)"),
    (["sam", "--alpha-search", "epoch"], "--alpha-search applies to OPT xsam only"),
    (["xsam", "--alpha-search", "often"], "argument --alpha-search: 'often' (allowed: 'epoch', "),
    (["adamw", "--rho", "0.1"], "--rho is an XSAM option"),
    (["xsam", "--max-epoch", "0"], "argument --max-epoch: 0 (allowed: an integer >= 1)"),
    (["xsam", "--average-last", "12"], "argument --average-last: 12 (allowed: <= "
                                       "--keep-last-epochs = 10"),
]


@pytest.mark.parametrize("argv,message", BAD_TRAIN)
def test_bad_train_options_fail_with_one_clear_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        recipe.main(["train", *argv, "--dry-run"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_average_checkpoints_equals_a_hand_average(tmp_path):
    g = torch.Generator().manual_seed(0)
    weights = [{"w": torch.randn(3, 4, generator=g), "h": torch.randn(5, generator=g).half(),
                "n": torch.tensor([3 + i, 7])} for i in range(3)]
    for epoch, w in zip((8, 9, 10), weights):
        torch.save({"model": w, "cfg": {"epoch": epoch}}, tmp_path / f"checkpoint{epoch}.pt")
    torch.save({"model": weights[0]}, tmp_path / "checkpoint_best.pt")
    paths = recipe.last_epoch_checkpoints(tmp_path, 2)
    assert [p.name for p in paths] == ["checkpoint10.pt", "checkpoint9.pt"]  # numeric order
    out = recipe.average_checkpoints(paths, tmp_path / "avg.pt")
    avg = torch.load(out)  # torch's default, weights_only=True
    w9, w10 = weights[1], weights[2]
    assert torch.allclose(avg["model"]["w"], (w9["w"].double() + w10["w"].double()).float() / 2)
    assert avg["model"]["h"].dtype == torch.float16
    assert torch.equal(avg["model"]["h"], ((w9["h"].float() + w10["h"].float()) / 2).half())
    assert avg["model"]["n"].tolist() == [(4 + 5) // 2, 7]
    assert avg["cfg"] == {"epoch": 10}  # the other entries: from the newest checkpoint
    with pytest.raises(SystemExit, match="holds 3 epoch checkpoints"):
        recipe.last_epoch_checkpoints(tmp_path, 4)


def test_generate_output_completeness_check():
    lines = [f"S-{i}\tx\nT-{i}\tref {i}\nH-{i}\t-0.5\thyp {i}" for i in (2, 0, 1)]
    text = "\n".join(lines) + "\nGenerate test with beam=5: BLEU4 = 12.34, 1/2/3/4 (BP=1.0)\n"
    parsed = recipe.parse_generate(text)
    assert parsed["bleu"] == 12.34 and parsed["hyps"][2] == "hyp 2"
    assert recipe.check_complete(parsed, 3) == [0, 1, 2]
    with pytest.raises(SystemExit, match="translated 3 of 4 test sentences"):
        recipe.check_complete(parsed, 4)


def test_raw_iwslt_references_in_fairseq_test_order(tmp_path):
    for i, stem in enumerate(recipe.IWSLT14_TEST_XML):
        (tmp_path / f"{stem}.de-en.en.xml").write_text(
            f'<doc>\n<seg id="1"> A{i} it’s </seg>\n<seg id="2">B{i}</seg>\n</doc>\n')
    refs = recipe.read_raw_references([str(tmp_path)])
    assert refs == [x for i in range(5) for x in (f"A{i} it's", f"B{i}")]
    (tmp_path / "IWSLT14.TED.tst2012.de-en.en.xml").unlink()
    with pytest.raises(SystemExit, match="IWSLT14.TED.tst2012.de-en.en.xml is missing"):
        recipe.read_raw_references([str(tmp_path)])


TINY_TRAIN = [*TINY_ARCH, "--max-tokens", "4000", "--log-interval", "1", "--dropout", "0.0"]


def test_train_and_evaluate_tiny_cpu_run(corpus, tmp_path):
    runs = tmp_path / "runs"
    args = ["xsam", "3", "--cpu", "--data", corpus, "--runs", str(runs), "--max-epoch", "2",
            "--no-eval-bleu", "--average-last", "2", "--", *TINY_TRAIN]
    env = {**os.environ, "PYTHON": PYTHON}
    subprocess.run(["bash", str(RECIPE_DIR / "train.sh"), *args], check=True, env=env,
                   capture_output=True, text=True)
    run = runs / "xsam-seed3"
    expected_line = subprocess.run(["bash", str(RECIPE_DIR / "train.sh"), *args[:-len(
        TINY_TRAIN) - 1], "--dry-run", "--", *TINY_TRAIN], check=True, env=env,
        capture_output=True, text=True).stdout.strip()
    assert (run / "command.txt").read_text().strip() == expected_line
    log = (run / "train.log").read_text()
    assert "xsam_alpha" in log and "XSAM alpha search at update 1" in log
    assert re.search(r"\| valid \| epoch 002 \| valid on 'valid' subset \| loss ", log)
    ckpts = run / "checkpoints"
    assert {"checkpoint1.pt", "checkpoint2.pt", "checkpoint_last.pt",
            "checkpoint_avg_last2.pt"} <= {p.name for p in ckpts.iterdir()}
    from fairseq_xsam.fairseq.checkpoints import load  # weights_only=True, fairseq's types

    one, two, avg = (load(ckpts / n)["model"] for n in
                     ("checkpoint1.pt", "checkpoint2.pt", "checkpoint_avg_last2.pt"))
    key = "encoder.layers.0.fc1.weight"
    assert not torch.equal(one[key], two[key])
    assert torch.allclose(avg[key], (one[key] + two[key]) / 2, atol=1e-7)

    # evaluate: default references = detokenized tokenized references
    subprocess.run(["bash", str(RECIPE_DIR / "evaluate.sh"), str(run), "--cpu",
                    "--batch-size", "7", "--expect-sentences", "20"], check=True, env=env,
                   capture_output=True, text=True)
    result = json.loads((run / "eval" / "bleu.json").read_text())
    assert set(result) >= {"tokenized_bleu", "sacrebleu", "sacrebleu_signature", "hypotheses",
                           "references", "checkpoint", "command"}
    gen = (run / "eval" / "generate-test.txt").read_text()
    hyps = {int(l.split("\t")[0][2:]): l.split("\t")[2] for l in gen.splitlines()
            if l.startswith("H-")}
    refs = {int(l.split("\t")[0][2:]): l.split("\t")[1] for l in gen.splitlines()
            if l.startswith("T-")}
    assert result["hypotheses"] == len(hyps) == 20 == result["references"]
    assert result["tokenized_bleu"] == float(re.search(r"BLEU4 = ([0-9.]+)", gen).group(1))
    assert result["checkpoint"].endswith("checkpoint_best.pt")
    assert "--required-batch-size-multiple 1" in result["command"]
    import sacrebleu
    from sacremoses import MosesDetokenizer

    md = MosesDetokenizer(lang="en")
    own = sacrebleu.corpus_bleu([md.detokenize(hyps[i].split()) for i in range(20)],
                                [[md.detokenize(refs[i].split()) for i in range(20)]])
    assert result["sacrebleu"] == pytest.approx(own.score, abs=0.006)
    assert "case:mixed" in result["sacrebleu_signature"]

    # raw references (the corpus' untokenized target side): case-insensitive, said so
    raw = Path(corpus).parent / "raw" / "test.en"
    subprocess.run(["bash", str(RECIPE_DIR / "evaluate.sh"), str(run), "--cpu", "--ref",
                    str(raw), "--out", str(tmp_path / "eval_raw")], check=True, env=env,
                   capture_output=True, text=True)
    result = json.loads((tmp_path / "eval_raw" / "bleu.json").read_text())
    assert "case:lc" in result["sacrebleu_signature"]
    own = sacrebleu.corpus_bleu([md.detokenize(hyps[i].split()) for i in range(20)],
                                [raw.read_text().splitlines()], lowercase=True)
    assert result["sacrebleu"] == pytest.approx(own.score, abs=0.006)

    # a test set of the wrong size is refused before generating
    bad = subprocess.run(["bash", str(RECIPE_DIR / "evaluate.sh"), str(run), "--cpu",
                          "--expect-sentences", "6750"], env=env, capture_output=True, text=True)
    assert bad.returncode != 0
    assert "has 20 sentences, not --expect-sentences 6750" in bad.stderr


def test_fairseq_hydra_train_xsam_config_tiny_cpu(corpus, tmp_path):
    model = [f"+model.{a[2:].replace('-', '_')}={b}" for a, b in zip(TINY_ARCH[2::2],
                                                                        TINY_ARCH[3::2])]
    out = subprocess.run(
        [PYTHON, "-m", "fairseq_cli.hydra_train", "--config-dir", str(recipe.CONFIG_DIR),
         "--config-name", "xsam", f"task.data={corpus}", "model._name=transformer", *model,
         "task.eval_bleu=false", "checkpoint.best_checkpoint_metric=loss",
         "checkpoint.maximize_best_checkpoint_metric=false", "common.cpu=true",
         "common.fp16=false", "common.log_interval=1", "optimization.max_update=2",
         f"checkpoint.save_dir={tmp_path / 'ck'}"],
        cwd=tmp_path, capture_output=True, text=True,  # hydra writes .hydra/ and a log here
        env={**os.environ, "FAIRSEQ_XSAM_USER_DIR": str(ROOT / "fairseq_xsam")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "hydra_train.log").is_file()
    log = out.stdout + out.stderr
    assert "xsam_alpha" in log and "XSAM alpha search at update 1" in log
    assert (tmp_path / "ck" / "checkpoint_last.pt").is_file()
