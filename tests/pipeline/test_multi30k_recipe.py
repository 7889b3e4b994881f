"""The Multi30k recipe (recipes/multi30k_de_en): train.sh's commands against the table and the
hydra configs (both parsed by fairseq), option errors, the study driver's plan, ρ choice,
skip and resume logic, and compare_bleu's several-test-set report (means, paired bootstrap,
edge-pinned α searches, rescoring) against independent computations. The whole pipeline on
real data runs in tests/pipeline/test_demo.py (demo --quick = the recipe's tiny preset)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from recipe_configs import GROUPS, fairseq_cfg, hydra_cfg

ROOT = Path(__file__).resolve().parents[2]
RECIPE_DIR = ROOT / "recipes" / "multi30k_de_en"
PYTHON = sys.executable
pytestmark = [pytest.mark.filterwarnings(r"ignore:\s*'[^']*' is validated against ConfigStore"),
              pytest.mark.filterwarnings(r"ignore:\s*The strict flag in the compose API")]


from fairseq_xsam import report as compare_bleu  # noqa: E402
from fairseq_xsam.recipes import multi30k as recipe  # noqa: E402
from fairseq_xsam.recipes import study  # noqa: E402
from fairseq_xsam.report import logs  # noqa: E402


def dry_run(*args) -> str:
    out = subprocess.run(["bash", str(RECIPE_DIR / "train.sh"), "--dry-run", *args],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHON": PYTHON})
    return out.stdout.strip()


def table_value(preset, group, key, opt="xsam"):
    """The value the table gives, read from the rows (the last row of a field wins)."""
    value = None
    for g, k, v, source in recipe.HYPERPARAMETERS:
        if (g, k) == (group, key) and not (opt == "adamw" and source.startswith("xsam")):
            value = recipe.PRESETS[preset]["table"][(g, k)] if v == "<preset>" else v
    return value


# ----------------------------------------------------------------------------- commands, configs

@pytest.mark.parametrize("opt", recipe.OPTIMIZERS)
def test_train_command_and_hydra_config_agree(opt, monkeypatch):
    monkeypatch.chdir(ROOT)
    alpha = ["--alpha", "0.5"] if opt == "fixed" else []
    cli = fairseq_cfg(dry_run(opt, "--data", "data-bin/x", *alpha))
    hyd = hydra_cfg(recipe.CONFIG_DIR, opt, ["task.data=data-bin/x",
                                             f"checkpoint.save_dir={cli['checkpoint']['save_dir']}"]
                    + (["+optimizer.alpha=0.5"] if opt == "fixed" else []))
    diff = []
    for group in GROUPS:
        for key in sorted(set(cli[group]) | set(hyd[group])):
            a, b = cli[group].get(key, "<absent>"), hyd[group].get(key, "<absent>")
            if group == "common" and key == "user_dir":
                a, b = os.path.realpath(a), os.path.realpath(b)
            if a != b:
                diff.append((group, key, a, b))
    model_keys = [k for g, k, _, _ in recipe.HYPERPARAMETERS if g == "model" and k != "_name"]
    for key in model_keys:  # every model field of the table, on both sides
        if cli["model"].get(key, "<absent>") != hyd["model"].get(key, "<absent>"):
            diff.append(("model", key, cli["model"].get(key), hyd["model"].get(key)))
    assert diff == []
    # and the values are the table's, read independently of train_settings
    for group, key in [("model", k) for k in model_keys] + [
            ("optimization", "lr"), ("optimization", "max_epoch"), ("dataset", "max_tokens"),
            ("lr_scheduler", "warmup_updates"), ("lr_scheduler", "warmup_init_lr"),
            ("criterion", "label_smoothing"), ("optimizer", "weight_decay")]:
        assert cli[group][key] == table_value("study", group, key, opt), (group, key)
    assert cli["model"]["arch"] == hyd["model"]["_name"] == "transformer"
    assert cli["checkpoint"]["no_epoch_checkpoints"] is True
    assert cli["checkpoint"]["best_checkpoint_metric"] == "loss"  # fairseq's default
    if opt == "adamw":
        assert cli["optimizer"]["_name"] == "adam"
    else:
        o = cli["optimizer"]
        assert (o["_name"], o["sam_variant"], o["rho"], o["probe_rho"]) == (
            "xsam_adamw", opt, 0.15, 0.45)
        assert o["alpha_search"] == ("epoch" if opt == "xsam" else None)


def test_config_files_are_generated_from_the_table(tmp_path, monkeypatch):
    subprocess.run([PYTHON, str(RECIPE_DIR / "recipe.py"), "configs", "--check"], check=True)
    assert sorted(p.stem for p in recipe.CONFIG_DIR.glob("*.yaml")) == sorted(recipe.OPTIMIZERS)
    # an edited config is caught by the check and by the field comparison
    monkeypatch.setattr(recipe, "CONFIG_DIR", tmp_path)
    recipe.main(["configs"])
    text = (tmp_path / "sam.yaml").read_text()
    assert "encoder_layers: 3" in text
    (tmp_path / "sam.yaml").write_text(text.replace("encoder_layers: 3", "encoder_layers: 4"))
    with pytest.raises(SystemExit, match="out of date.*sam.yaml"):
        recipe.main(["configs", "--check"])


def test_dry_run_rho_label_preset_and_passthrough():
    words = shlex.split(dry_run("sam", "7", "--cpu", "--rho", "0.05", "--label",
                                "sweep/sam-rho0.05", "--runs", "R", "--", "--max-update", "9"))
    get = lambda flag: words[words.index(flag) + 1]  # noqa: E731
    assert get("--rho") == "0.05" and get("--probe-rho") == "0.15"  # 3 rho, the paper's ratio
    assert get("--save-dir") == "R/sweep/sam-rho0.05-seed7/checkpoints"
    assert words[-2:] == ["--max-update", "9"] and "--cpu" in words and "--fp16" not in words
    assert get("--seed") == "7" and "--alpha-search" not in words
    words = shlex.split(dry_run("xsam", "--rho", "0.1", "--probe-rho", "0.1", "--preset", "tiny"))
    assert get("--probe-rho") == "0.1" and get("--encoder-embed-dim") == "32"
    assert words[1 + words.index("fairseq_cli.train")] == recipe.default_data("tiny")
    assert get("--max-epoch") == str(table_value("tiny", "optimization", "max_epoch"))
    assert "--probe-rho" not in shlex.split(dry_run("adamw"))


BAD_TRAIN = [
    (["xsam", "--label", "x-seed2"], "Invalid --label value: 'x-seed2'"),
    (["xsam", "--label", "../up"], "Invalid --label value: '../up'"),
    (["adamw", "--rho", "0.1"], "--rho is an XSAM option"),
    (["xsam", "--rho", "0"], "argument --rho: 0 (allowed: a number > 0)"),
    (["fixed"], "OPT fixed needs --alpha"),
    (["sam", "--alpha-search", "epoch"], "--alpha-search applies to OPT xsam only"),
    (["xsam", "--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
]


@pytest.mark.parametrize("argv,message", BAD_TRAIN)
def test_bad_train_options_fail_with_one_clear_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        recipe.main(["train", *argv, "--dry-run"])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_evaluate_dry_run_scores_three_test_sets(tmp_path):
    out = subprocess.run(["bash", str(RECIPE_DIR / "evaluate.sh"), str(tmp_path / "r" / "c.pt"),
                          "--data", "D", "--cpu", "--dry-run"], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHON": PYTHON}).stdout.splitlines()
    subsets = [shlex.split(l)[shlex.split(l).index("--gen-subset") + 1] for l in out[:3]]
    assert subsets == ["test", "test1", "test2"] == list(recipe.TEST_SETS)
    for line in out[:3]:
        assert "--required-batch-size-multiple 1" in line and "--beam 5" in line
        assert "--remove-bpe sentencepiece" in line
    assert "fairseq_xsam.lab.flatness" in out[3] and "--out " + str(tmp_path / "r" / "eval" /
                                                                "sharpness.json") in out[3]


# ----------------------------------------------------------------------------- study driver

PLAN = """
preset = "tiny"
runs = "{runs}"
results = "{results}"
[[run]]
label = "sweep/{{opt}}-rho{{rho}}"
opt = ["sam", "xsam"]
rho = [0.1, 0.2]
sweep = true
evaluate = false
args = ["--max-epoch", "1"]
[[run]]
opt = ["adamw", "xsam"]
seeds = [1, 2]
rho = "sweep"
[[run]]
label = "xsam_auto"
opt = "xsam"
rho = 0.05
args = ["--", "--alpha-max", "auto"]
[[run]]
label = "xsam_probe1"
opt = "xsam"
rho = 0.05
probe_ratio = 1.0
"""


def valid_log(losses):
    return "".join(f"2026-01-01 | INFO | valid | epoch {e:03d} | valid on 'valid' subset | "
                   f"loss {l} | nll_loss 1.0 | num_updates {10 * e}\n"
                   for e, l in enumerate(losses, 1))


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(PLAN.format(runs=tmp_path / "runs", results=tmp_path / "results"))
    return study.load_plan(path)


def test_plan_expands_in_order(plan):
    names = [r["name"] for r in plan["run"]]
    assert names == ["sweep/sam-rho0.1-seed1", "sweep/sam-rho0.2-seed1",
                     "sweep/xsam-rho0.1-seed1", "sweep/xsam-rho0.2-seed1",
                     "adamw-seed1", "xsam-seed1", "adamw-seed2", "xsam-seed2",
                     "xsam_auto-seed1", "xsam_probe1-seed1"]
    adamw = plan["run"][4]
    assert adamw["rho"] is None and plan["run"][5]["rho"] == "sweep"
    argv = study.train_argv(plan, plan["run"][-2], 0.05)
    assert argv[:2] == ["xsam", "1"] and argv[-3:] == ["--", "--alpha-max", "auto"]
    assert argv[argv.index("--label") + 1] == "xsam_auto" and "--cpu" in argv
    assert argv[argv.index("--rho") + 1] == "0.05" and "--probe-rho" not in argv  # recipe: 3 rho
    # probe_ratio: --probe-rho = ratio x the (chosen) rho
    argv = study.train_argv(plan, plan["run"][-1], 0.2)
    assert argv[argv.index("--rho") + 1] == "0.2" and argv[argv.index("--probe-rho") + 1] == "0.2"


def test_bad_plans_are_one_line_errors(tmp_path, capsys):
    for text, message in (('[[run]]\nopt = "adam"\n', "opt 'adam' (allowed: adamw"),
                          ('[[run]]\nopt = "sam"\nrh0 = 1\n', "unknown keys ['rh0']"),
                          ('[[run]]\nopt = "sam"\n[[run]]\nopt = "sam"\n', "planned twice"),
                          ('[[run]]\nopt = "sam"\nrho = "best"\n', "rho 'best' (allowed"),
                          ('[[run]]\nopt = "xsam"\nprobe_ratio = 0\n', "probe_ratio 0 (allowed")):
        (tmp_path / "p.toml").write_text(text)
        with pytest.raises(SystemExit):
            study.main(["status", "--plan", str(tmp_path / "p.toml")])
        assert message in capsys.readouterr().err


def fake_stages(monkeypatch, plan, calls, fail_on=None):
    """recipe.train_main / evaluate_main replaced by writers of the files they produce."""
    def train(argv):
        label, seed = argv[argv.index("--label") + 1], argv[1]
        run = Path(argv[argv.index("--runs") + 1]) / f"{label}-seed{seed}"
        calls.append(("train", f"{label}-seed{seed}", argv))
        if fail_on == f"{label}-seed{seed}":
            raise SystemExit("train.sh: fairseq-train failed")
        run.mkdir(parents=True, exist_ok=True)
        rho = float(argv[argv.index("--rho") + 1]) if "--rho" in argv else 0
        loss = {0.1: [5.0, 4.2], 0.2: [5.0, 4.0]}.get(rho, [4.5])
        if label.startswith("sweep/xsam"):
            loss = [4.1] if rho == 0.1 else [4.3]
        (run / "train.log").write_text(valid_log(loss))
        (run / "command.txt").write_text(" ".join(argv) + "\n")
        (run / "timing.json").write_text(json.dumps({"finished": True, "wall_s": 60,
                                                     "updates": 10, "updates_per_s": 1.0}))

    def evaluate(argv):
        run = Path(argv[0])
        calls.append(("evaluate", run.name, argv))
        (run / "eval").mkdir(exist_ok=True)
        (run / "eval" / "bleu.json").write_text(json.dumps({"test2016_flickr": {
            "sacrebleu": 1.0}}))
        (run / "eval" / "sharpness.json").write_text("{}")
        (run / "eval" / "test2016_flickr.hyp.en").write_text("a\n")
        (run / "eval" / "generate-test.txt").write_text("not committed\n")

    monkeypatch.setattr(study.recipe, "train_main", train)
    monkeypatch.setattr(study.recipe, "evaluate_main", evaluate)
    monkeypatch.setattr(study, "prepare_data", lambda plan, log=print: None)


def test_study_runs_chooses_rho_skips_and_resumes(plan, monkeypatch, tmp_path):
    calls = []
    path = tmp_path / "plan.toml"
    fake_stages(monkeypatch, plan, calls, fail_on="xsam-seed1")
    with pytest.raises(SystemExit, match="fairseq-train failed"):
        study.main(["run", "--plan", str(path)])
    done = [n for kind, n, _ in calls if kind == "train"]
    assert done[:5] == ["sweep/sam-rho0.1-seed1", "sweep/sam-rho0.2-seed1",
                        "sweep/xsam-rho0.1-seed1", "sweep/xsam-rho0.2-seed1", "adamw-seed1"]
    assert not any(kind == "evaluate" and n.startswith("sweep") for kind, n, _ in calls)
    # the chosen rho: the lowest best validation loss of the optimizer's sweep
    assert study.chosen_rho(plan, "sam") == 0.2 and study.chosen_rho(plan, "xsam") == 0.1
    xsam_train = next(a for kind, n, a in calls if n == "xsam-seed1")
    assert xsam_train[xsam_train.index("--rho") + 1] == "0.1"
    res = tmp_path / "results" / "runs"
    assert sorted(p.name for p in (res / "adamw-seed1" / "eval").iterdir()) == [
        "bleu.json", "sharpness.json", "test2016_flickr.hyp.en"]  # no generate output
    assert {p.name for p in (res / "adamw-seed1").iterdir()} == {
        "command.txt", "train.log", "timing.json", "eval"}
    assert not (res / "xsam-seed1").exists()
    status = "\n".join(study.status_lines(plan))
    assert re.search(r"done +adamw-seed1: .*1.0 updates/s, best valid loss 4.5", status)
    assert "pending  xsam-seed1: xsam, rho sweep -> 0.1" in status
    # the next session: finished runs are not touched again; the failed one is run
    calls.clear()
    fake_stages(monkeypatch, plan, calls)
    assert study.main(["run", "--plan", str(path), "--max-runs", "2"]) == 0
    assert [n for kind, n, _ in calls if kind == "train"] == ["xsam-seed1", "adamw-seed2"]
    calls.clear()
    study.main(["run", "--plan", str(path)])
    assert [n for kind, n, _ in calls if kind == "train"] == [
        "xsam-seed2", "xsam_auto-seed1", "xsam_probe1-seed1"]
    probe1 = next(a for kind, n, a in calls if n == "xsam_probe1-seed1" and kind == "train")
    assert probe1[probe1.index("--probe-rho") + 1] == "0.05"
    calls.clear()
    study.main(["run", "--plan", str(path)])
    assert calls == []
    assert all(l.startswith("done") for l in study.status_lines(plan))


def test_study_runs_and_data_overrides(plan, monkeypatch, tmp_path):
    calls = []
    fake_stages(monkeypatch, plan, calls)
    elsewhere, data = tmp_path / "elsewhere", tmp_path / "bin"
    study.main(["run", "--plan", str(tmp_path / "plan.toml"), "--only", "adamw-seed1",
                "--runs", str(elsewhere), "--data", str(data)])
    (argv,) = [a for kind, n, a in calls if kind == "train"]
    assert argv[argv.index("--runs") + 1] == str(elsewhere)
    assert argv[argv.index("--data") + 1] == str(data)
    assert (elsewhere / "adamw-seed1" / "train.log").is_file()


def test_study_waits_for_the_sweep(plan, monkeypatch, tmp_path):
    calls = []
    fake_stages(monkeypatch, plan, calls)
    study.main(["run", "--plan", str(tmp_path / "plan.toml"), "--only", "xsam-seed*"])
    assert calls == []  # xsam-seed1/2 need the xsam sweep, which --only left out
    study.main(["run", "--plan", str(tmp_path / "plan.toml"), "--only", "sweep/xsam*"])
    study.main(["run", "--plan", str(tmp_path / "plan.toml"), "--only", "xsam-seed1"])
    assert [n for kind, n, _ in calls if kind == "train"][-1] == "xsam-seed1"


def test_training_seconds_add_up_every_epoch_once(tmp_path):
    """fairseq resets train_wall each epoch: the run's training time is the sum over epochs (an
    epoch logged again after a resume counts once, with its last line)."""
    line = ("2026-01-01 | INFO | train | epoch {e:03d} | loss 5 | ups 3 | num_updates {u} | "
            "train_wall {w} | wall {t}\n")
    log = "".join(line.format(e=e, u=u, w=w, t=t) for e, u, w, t in (
        (1, 261, 89, 92), (2, 522, 81, 175), (2, 522, 80, 180), (3, 783, 82, 259)))
    common = logs
    assert common.training_seconds(log) == 89 + 80 + 82
    assert common.last_train_stats(log)["num_updates"] == 783
    assert common.training_seconds("no epoch ended\n") is None
    run = tmp_path / "adamw-seed1"
    run.mkdir()
    (run / "train.log").write_text(log)
    info = compare_bleu.load_run(run, allow_missing=True)  # no timing.json: from the log
    # the speed is the median epoch's: 261 updates in 89, 80 (epoch 2's last line), 82 s
    assert info["timing"]["updates_per_s"] == pytest.approx(261 / 82)


def test_speed_ignores_a_stalled_epoch_and_wall_clock_counts_killed_processes(tmp_path):
    """An epoch in which the machine was paused (train_wall 4,500 s instead of ~800) does not
    change the speed; the wall-clock counts every fairseq process that wrote the log, also one
    killed with its session (it never wrote its timing.json entry)."""
    start = "{} | INFO | fairseq_cli.train | {{'_name': None, 'common': {{}}}}\n"
    epoch = ("{} | INFO | train | epoch {:03d} | loss 5 | ups 0.3 | num_updates {} | "
             "train_wall {} | wall 0\n")
    log = (start.format("2026-12-02 04:42:43")
           + epoch.format("2026-12-02 04:57:00", 1, 261, 850)
           + epoch.format("2026-12-02 05:11:00", 2, 522, 813)
           + epoch.format("2026-12-02 06:25:00", 3, 783, 4500)  # paused for an hour
           + "2026-12-02 06:40:43 | INFO | train_inner | epoch 004: 100 / 261\n"  # killed here
           + "a warning without a time stamp\n"
           + start.format("2026-12-02 07:06:00")
           + epoch.format("2026-12-02 07:20:00", 4, 1044, 797)
           + epoch.format("2026-12-02 07:34:30", 5, 1305, 800))
    common = logs
    rates = common.epoch_rates(log)
    assert rates == pytest.approx({"1": 261 / 850, "2": 261 / 813, "3": 261 / 4500,
                                   "4": 261 / 797, "5": 261 / 800})
    assert common.median_rate(log) == pytest.approx(261 / 813)
    assert common.session_walls(log) == [2 * 3600 - 2 * 60 + 0, 14 * 60 + 30 + 14 * 60]
    run = tmp_path / "xsam-seed1"
    run.mkdir()
    (run / "train.log").write_text(log)
    (run / "timing.json").write_text(json.dumps({"wall_s": 1710, "updates_per_s": 0.15,
                                                 "continued_from": "sweep/x"}))
    timing = compare_bleu.load_run(run, allow_missing=True)["timing"]
    assert timing["updates_per_s"] == pytest.approx(261 / 813)
    assert timing["wall_s"] == 7080 + 1710 and timing["continued_from"] == "sweep/x"


CONTINUE_PLAN = """
preset = "tiny"
runs = "{runs}"
results = "{results}"
[[run]]
label = "sweep/{{opt}}-rho{{rho}}"
opt = "xsam"
rho = [0.1, 0.2]
sweep = true
evaluate = false
args = ["--max-epoch", "1"]
[[run]]
opt = "xsam"
seeds = [1, 2]
rho = "sweep"
args = ["--max-epoch", "3"]
[[run]]
label = "xsam_probe1"
opt = "xsam"
rho = "sweep"
probe_ratio = 1.0
args = ["--max-epoch", "3"]
"""


def test_a_longer_run_continues_its_sweep_run_instead_of_repeating_its_epochs(
        monkeypatch, tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text(CONTINUE_PLAN.format(runs=tmp_path / "runs", results=tmp_path / "results"))
    plan = study.load_plan(path)
    calls, seen = [], {}
    fake_stages(monkeypatch, plan, calls)
    fake_train = study.recipe.train_main

    def train(argv):  # what the run's folder held when train.sh started, then the fake
        label, seed = argv[argv.index("--label") + 1], argv[1]
        run = Path(argv[argv.index("--runs") + 1]) / f"{label}-seed{seed}"
        last = run / "checkpoints" / "checkpoint_last.pt"
        seen[f"{label}-seed{seed}"] = (
            last.read_text() if last.is_file() else None,
            (run / "train.log").read_text() if (run / "train.log").is_file() else None,
            json.loads((run / "timing.json").read_text()) if (run / "timing.json").is_file()
            else None)
        fake_train(argv)
        if label.startswith("sweep/"):
            (run / "checkpoints").mkdir(exist_ok=True)
            (run / "checkpoints" / "checkpoint_last.pt").write_text(f"last of {label}")
            (run / "checkpoints" / "checkpoint_best.pt").write_text(f"best of {label}")

    monkeypatch.setattr(study.recipe, "train_main", train)
    study.main(["run", "--plan", str(path), "--only", "sweep/*"])
    assert study.chosen_rho(plan, "xsam") == 0.1
    runs = {r["name"]: r for r in plan["run"]}
    # same optimizer, seed, rho, probe ratio and options, fewer epochs: the sweep run at 0.1
    assert study.sweep_prefix(plan, runs["xsam-seed1"], 0.1)["name"] == "sweep/xsam-rho0.1-seed1"
    assert study.sweep_prefix(plan, runs["xsam-seed1"], 0.2)["name"] == "sweep/xsam-rho0.2-seed1"
    assert study.sweep_prefix(plan, runs["xsam-seed2"], 0.1) is None  # another seed
    assert study.sweep_prefix(plan, runs["xsam_probe1-seed1"], 0.1) is None  # rho' = rho
    study.main(["run", "--plan", str(path)])
    sweep_dir = tmp_path / "runs" / "sweep" / "xsam-rho0.1-seed1"
    last, log, timing = seen["xsam-seed1"]
    assert last == "last of sweep/xsam-rho0.1"  # train.sh resumed from the sweep's checkpoint
    assert log == (sweep_dir / "train.log").read_text()  # its log holds the first epochs
    assert timing["continued_from"] == "sweep/xsam-rho0.1-seed1" and not timing["finished"]
    work = tmp_path / "runs" / "xsam-seed1"
    assert (work / "checkpoints" / "checkpoint_best.pt").read_text() == "best of sweep/xsam-rho0.1"
    assert not (tmp_path / "runs" / "xsam-seed1.continuing").exists()
    assert seen["xsam-seed2"] == (None, None, None) == seen["xsam_probe1-seed1"]
    # the sweep's own folder is left as it was
    assert (sweep_dir / "checkpoints" / "checkpoint_last.pt").read_text() == \
           "last of sweep/xsam-rho0.1"
    # a run that has started is never overwritten; a sweep without its checkpoint is not used
    assert study.continue_sweep(plan, runs["xsam-seed1"], runs["sweep/xsam-rho0.1-seed1"]) is False
    (sweep_dir / "checkpoints" / "checkpoint_last.pt").unlink()
    assert study.sweep_prefix(plan, runs["xsam-seed1"], 0.1) is None


def test_two_workers_share_the_plan_through_claims(plan, monkeypatch, tmp_path):
    """A run claimed by a live worker is left to it; a claim whose process is gone is taken
    over; a run that needs a sweep run another worker holds waits for it."""
    calls = []
    path = str(tmp_path / "plan.toml")
    fake_stages(monkeypatch, plan, calls)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def hold(name, pid):
            claim = study._claim_path(plan, name)
            claim.parent.mkdir(parents=True, exist_ok=True)
            claim.write_text(f"{pid} {study._process_start(pid) or ''}\n")
            return claim

        claim = hold("adamw-seed1", other.pid)
        study.main(["run", "--plan", path, "--only", "adamw-*"])
        assert [n for kind, n, _ in calls if kind == "train"] == ["adamw-seed2"]
        assert claim.is_file()  # still the other worker's
        # the same pid with another start time is a reused pid, not the worker: stale
        claim.write_text(f"{other.pid} 1\n")
        calls.clear()
        study.main(["run", "--plan", path, "--only", "adamw-*"])
        assert [n for kind, n, _ in calls if kind == "train"] == ["adamw-seed1"]
        assert not claim.exists()  # released after the run
        # xsam-seed1 needs the xsam sweep; the other worker holds one of its runs
        for name in ("sweep/xsam-rho0.1-seed1", "sweep/sam-rho0.1-seed1",
                     "sweep/sam-rho0.2-seed1"):
            study.run_one(plan, next(r for r in plan["run"] if r["name"] == name),
                          log=lambda *a: None)
        held = hold("sweep/xsam-rho0.2-seed1", other.pid)
        waited = []

        def other_worker_finishes(seconds):  # what the other worker does meanwhile
            waited.append(seconds)
            held.unlink()
            study.run_one(plan, next(r for r in plan["run"]
                                     if r["name"] == "sweep/xsam-rho0.2-seed1"),
                          log=lambda *a: None)

        monkeypatch.setattr(study.time, "sleep", other_worker_finishes)
        calls.clear()
        study.main(["run", "--plan", path, "--only", "xsam-seed1"])
        assert waited == [study.WAIT_S]
        assert [n for kind, n, _ in calls if kind == "train"] == [
            "sweep/xsam-rho0.2-seed1", "xsam-seed1"]
    finally:
        other.kill()
        other.wait()
    # a dead worker's claim is stale
    hold("xsam-seed2", other.pid)
    calls.clear()
    study.main(["run", "--plan", path, "--only", "xsam-seed2"])
    assert [n for kind, n, _ in calls if kind == "train"] == ["xsam-seed2"]


# ------------------------------------------------- a session starts only what it can finish

def timed_log(epochs, updates_per_epoch, train_wall, other_s, start=1_700_000_000):
    """A fairseq-like train.log: one process, every epoch `train_wall` seconds of training
    and `other_s` seconds of the rest (validation, checkpoint), timestamped."""
    stamp = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start + t))  # noqa
    lines, t = [f"{stamp(0)} | INFO | fairseq_cli.train | {{'_name': None}}"], 0.0
    for e in range(1, epochs + 1):
        t += train_wall
        lines.append(f"{stamp(t)} | INFO | train | epoch {e:03d} | loss 4.0 | num_updates "
                     f"{updates_per_epoch * e} | train_wall {train_wall}")
        t += other_s
        lines.append(f"{stamp(t)} | INFO | valid | epoch {e:03d} | valid on 'valid' subset | "
                     f"loss {5.0 - e / 10} | num_updates {updates_per_epoch * e}")
    return "\n".join(lines) + "\n"


def finish(plan, name, log, evaluate_s=None, finished_at="2026-01-01 00:00:00"):
    run = next(r for r in plan["run"] if r["name"] == name)
    res = study.results_dir(plan, run)
    res.mkdir(parents=True, exist_ok=True)
    (res / "train.log").write_text(log)
    (res / "timing.json").write_text(json.dumps(
        {"finished": True, "finished_at": finished_at,
         **({"evaluate_s": evaluate_s} if evaluate_s is not None else {})}))
    return run


def test_cost_estimates_come_from_the_finished_runs_logs(plan, tmp_path):
    runs = {r["name"]: r for r in plan["run"]}
    assert study.estimate_seconds(plan, runs["adamw-seed1"]) is None  # nothing measured yet
    # a SAM sweep run: 100 updates an epoch, 200 s of training (2 passes: 1 s a pass), 10 s else
    finish(plan, "sweep/sam-rho0.1-seed1", timed_log(1, 100, 200, 10))
    epochs = study.recipe.PRESETS["tiny"]["table"][("optimization", "max_epoch")]
    eval_s = study.DEFAULT_EVAL_S
    assert study.estimate_seconds(plan, runs["adamw-seed1"]) == pytest.approx(
        study.SAFETY * (epochs * (100 * 1.0 + 10) + eval_s))
    assert study.estimate_seconds(plan, runs["xsam-seed1"]) == pytest.approx(
        study.SAFETY * (epochs * (200 + 10) + eval_s))
    # a sweep run is not evaluated; --max-epoch 1
    assert study.estimate_seconds(plan, runs["sweep/xsam-rho0.2-seed1"]) == pytest.approx(
        study.SAFETY * 210)
    # a finished adamw run is the better reference for adamw (the latest with the same passes),
    # and its measured evaluation replaces the guess
    finish(plan, "adamw-seed1", timed_log(2, 100, 50, 30), evaluate_s=123,
           finished_at="2026-01-01 01:00:00")
    assert study.estimate_seconds(plan, runs["adamw-seed2"]) == pytest.approx(
        study.SAFETY * (epochs * 80 + 123))
    assert study.estimate_seconds(plan, runs["xsam-seed1"]) == pytest.approx(
        study.SAFETY * (epochs * 210 + 123))
    # a started run with a checkpoint needs only its remaining epochs; one without a checkpoint
    # (a new machine) starts over
    work = study.work_dir(plan, runs["xsam-seed1"])
    (work / "checkpoints").mkdir(parents=True)
    (work / "train.log").write_text(timed_log(1, 100, 200, 10))
    full = study.estimate_seconds(plan, runs["xsam-seed1"])
    (work / "checkpoints" / "checkpoint_last.pt").write_text("x")
    assert study.estimate_seconds(plan, runs["xsam-seed1"]) == pytest.approx(
        full - study.SAFETY * 210 * min(1, epochs))


def test_until_starts_only_the_runs_that_finish_in_time(plan, monkeypatch, tmp_path, capsys):
    calls = []
    fake_stages(monkeypatch, plan, calls)
    for name in ("sweep/sam-rho0.1-seed1", "sweep/sam-rho0.2-seed1", "sweep/xsam-rho0.1-seed1",
                 "sweep/xsam-rho0.2-seed1"):
        study.run_one(plan, next(r for r in plan["run"] if r["name"] == name),
                      log=lambda *a: None)
    # the measured cost: 1 s a pass, 1000 updates an epoch
    finish(plan, "sweep/sam-rho0.1-seed1", timed_log(1, 1000, 2000, 0))
    finish(plan, "sweep/xsam-rho0.1-seed1", timed_log(1, 1000, 2000, 0),
           finished_at="2026-01-01 02:00:00")
    runs = {r["name"]: r for r in plan["run"]}
    adamw = study.estimate_seconds(plan, runs["adamw-seed1"])
    xsam = study.estimate_seconds(plan, runs["xsam-seed1"])
    assert xsam > adamw * 1.5
    now = 1_800_000_000.0
    monkeypatch.setattr(study.time, "time", lambda: now)
    # room for one adamw run but not for an xsam run: the adamw runs go, xsam waits
    assert study.run_pending(plan, until=now + (adamw + xsam) / 2, log=print) == 2
    assert [n for kind, n, _ in calls if kind == "train"][-2:] == ["adamw-seed1", "adamw-seed2"]
    assert not any(n.startswith("xsam") for kind, n, _ in calls[-4:])
    out = capsys.readouterr().out
    assert re.search(r"xsam-seed1: left for a later session: needs about \d+ min, \d+ min left",
                     out)
    assert study.fits(plan, runs["xsam-seed1"], now + xsam + 1, log=lambda *a: None)
    assert not study.fits(plan, runs["xsam-seed1"], now + xsam - 1, log=lambda *a: None)
    assert study.fits(plan, runs["xsam-seed1"], None)


def test_a_run_carried_over_from_an_earlier_session_goes_before_new_ones(plan, monkeypatch,
                                                                         tmp_path):
    calls = []
    fake_stages(monkeypatch, plan, calls)
    path = str(tmp_path / "plan.toml")
    assert study.main(["run", "--plan", path, "--only", "sweep/*"]) == 0
    runs = {r["name"]: r for r in plan["run"]}
    order = [r["name"] for r in plan["run"] if not r["sweep"]]
    assert order[0] == "adamw-seed1" and order[-1] == "xsam_probe1-seed1"
    # the last run of the plan began in an earlier session whose machine kept its checkpoint;
    # one without a checkpoint (a log alone: the machine lost it) keeps its place
    for name, checkpoint in (("xsam_probe1-seed1", True), ("xsam-seed2", False)):
        work = study.work_dir(plan, runs[name])
        (work / "checkpoints").mkdir(parents=True)
        (work / "train.log").write_text(valid_log([5.0]))
        if checkpoint:
            (work / "checkpoints" / "checkpoint_last.pt").write_text("x")
    assert [n for n in order if study.started(plan, runs[n])] == ["xsam_probe1-seed1"]
    calls.clear()
    assert study.main(["run", "--plan", path, "--max-runs", "2"]) == 0
    assert [n for kind, n, _ in calls if kind == "train"] == ["xsam_probe1-seed1",
                                                              "adamw-seed1"]


def test_until_is_a_time_in_the_future(capsys, tmp_path, plan):
    now = time.mktime((2026, 12, 2, 11, 0, 0, 0, 0, -1))
    assert study.parse_until("13:50", now) == now + (2 * 60 + 50) * 60
    assert study.parse_until("10:30", now) == now + (23 * 60 + 30) * 60  # its next occurrence
    assert study.parse_until("2026-12-03 09:00", now) == now + 22 * 3600
    for bad in ("25:00", "soon", "2026-12-01 09:00"):
        with pytest.raises(argparse.ArgumentTypeError, match="allowed: HH:MM"):
            study.parse_until(bad, now)
    with pytest.raises(SystemExit):
        study.main(["run", "--plan", str(tmp_path / "plan.toml"), "--until", "soon"])
    err = capsys.readouterr().err
    assert "--until" in err and "allowed: HH:MM" in err


@pytest.mark.parametrize("argv", [
    ["xsam", "1", "--rho", "0.05", "--cpu", "--", "--alpha-max", "auto"],
    ["sam", "2", "--rho", "0.1", "--ascent-steps", "3", "--epoch-checkpoints", "--cpu"],
    ["fixed", "1", "--rho", "0.05", "--alpha", "2", "--cpu", "--preset", "demo"],
    ["adamw", "3", "--cpu", "--preset", "tiny", "--label", "base"],
])
def test_run_json_from_the_table_equals_the_one_migrated_from_its_command(argv):
    """train.sh's run.json (from the settings table) equals what the one-off migration of a
    committed run reads back from the same command; the report's ρ comes from it."""
    from fairseq_xsam.report import run_record
    from fairseq_xsam.report.runs import rho_of

    args, run, command = recipe.train_args(argv)
    assert args.record == run_record.from_command(command)
    assert args.record["command"] == [str(c) for c in command]
    rho = argv[argv.index("--rho") + 1] if "--rho" in argv else None
    assert rho_of({"record": args.record}) == (None if rho is None else float(rho))


def test_committed_runs_have_a_run_json_that_matches_their_command():
    from fairseq_xsam.report import run_record

    runs = sorted((ROOT / "docs" / "results" / "demo-multi30k-cpu" / "runs").glob("*-seed*"))
    assert len(runs) == 3
    for run in runs:
        words = shlex.split((run / "command.txt").read_text())
        assert run_record.read(run) == run_record.from_command(words), run


def test_report_puts_every_validation_only_run_in_the_sweep_table(tmp_path, monkeypatch):
    """A sweep point added later with sweep = false (so the chosen ρ of finished runs stays)
    and evaluate = false is still a validation-only run: the report's sweep table lists it,
    and the chosen ρ does not move."""
    path = tmp_path / "plan.toml"
    path.write_text(PLAN.format(runs=tmp_path / "runs", results=tmp_path / "results") + """
[[run]]
label = "sweep/{opt}-rho{rho}"
opt = "xsam"
rho = [0.05]
evaluate = false
args = ["--max-epoch", "1"]
""")
    plan = study.load_plan(path)
    for name, loss in (("sweep/sam-rho0.1-seed1", 4.1), ("sweep/sam-rho0.2-seed1", 4.2),
                       ("sweep/xsam-rho0.1-seed1", 4.1), ("sweep/xsam-rho0.2-seed1", 4.2),
                       ("sweep/xsam-rho0.05-seed1", 4.0), ("xsam-seed1", 3.9)):
        finish(plan, name, valid_log([loss]))
    seen = {}
    monkeypatch.setattr(study.report_cli, "main", lambda argv: seen.setdefault("argv", argv))
    study.report(plan)
    argv = seen["argv"]
    sweep = [Path(a).name for a in argv[argv.index("--sweep") + 1:]]
    assert sorted(sweep) == ["sam-rho0.1-seed1", "sam-rho0.2-seed1", "xsam-rho0.05-seed1",
                             "xsam-rho0.1-seed1", "xsam-rho0.2-seed1"]
    assert [Path(a).name for a in argv[:argv.index("--out")]] == ["xsam-seed1"]
    assert study.chosen_rho(plan, "xsam") == 0.1  # the later point is not a sweep = true run


def test_a_preparation_is_reused_from_any_copy_of_the_corpus_and_only_of_it(tmp_path):
    """The data-bin is keyed by the corpus's content, not by the checkout's path: a study run
    from another checkout reuses it, a changed corpus is refused."""
    import gzip
    import shutil

    def corpus(name):
        folder = tmp_path / name
        shutil.copytree(recipe.SOURCE, folder, ignore=shutil.ignore_patterns("*.md"))
        return folder

    first, moved, changed = corpus("a"), corpus("b"), corpus("c")
    lines = gzip.decompress((changed / "train.en.gz").read_bytes()).decode().splitlines()
    lines[0] = lines[0] + " (edited)"
    (changed / "train.en.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    out, messages = tmp_path / "bin", []
    settings = dict(vocab=300, train_lines=400, test_lines=40)
    made = recipe.prepare(out, source=first, log=messages.append, **settings)
    assert made["sizes"]["train"] == 400 and not any("prepared already" in m for m in messages)
    again = recipe.prepare(out, source=moved, log=messages.append, **settings)
    assert again == made and "is prepared already" in messages[-1]
    with pytest.raises(SystemExit, match=r"prepared with other settings \(source_sha256; "):
        recipe.prepare(out, source=changed, log=messages.append, **settings)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["source_sha256"]  # as written before the data-bin was keyed by content
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match=r"\(source_sha256 \(not recorded: an older prep"):
        recipe.prepare(out, source=first, log=messages.append, **settings)
