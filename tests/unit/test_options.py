"""Every invalid xsam_adamw option stops fairseq-train and fairseq-hydra-train where they read
the options: exit status 2, one line ``PROG: error: ...`` naming the option, the value and the
allowed range, no traceback, nothing written, no data read (the data folder does not exist).
The plain-PyTorch XSAM raises ValueError with the same rule's wording. Both take their options,
defaults and rules from one table, fairseq_xsam.settings.OPTIONS."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# registers xsam_adamw here: fairseq-train's --user-dir, run in this process below, skips a
# fairseq_xsam imported before fairseq (see fairseq_xsam/fairseq/__init__.py)
import fairseq_xsam.fairseq  # noqa: F401
from fairseq_xsam import XSAM, settings
from fairseq_xsam.settings import CHECKED, OptionError, parse_text, validate

ROOT = Path(__file__).resolve().parents[2]
USER_DIR = str(ROOT / "fairseq_xsam")
BIN = os.path.dirname(sys.executable)
CONFIG_DIR = ROOT / "recipes" / "iwslt14_de_en" / "config"
VARIANTS = "'xsam', 'fixed', 'sam', 'msam', 'msam+', 'lsam', 'lsam+'"

# (fairseq-train words, the message after "fairseq-train: error: ")
CLI_CASES = [
    (["--rho", "0"], "argument --rho: invalid value 0.0 (allowed: --rho > 0)"),
    (["--rho", "nan"], "argument --rho: invalid value nan (allowed: --rho > 0)"),
    (["--rho", "abc"], "argument --rho: invalid value 'abc' (allowed: --rho > 0)"),
    (["--probe-rho", "-1"], "argument --probe-rho: invalid value -1.0 (allowed: --probe-rho > 0)"),
    (["--ascent-steps", "0"],
     "argument --ascent-steps: invalid value 0 (allowed: an integer >= 1)"),
    (["--ascent-steps", "1.5"],
     "argument --ascent-steps: invalid value '1.5' (allowed: an integer >= 1)"),
    (["--sam-variant", "gsam"],
     f"argument --sam-variant: invalid choice: 'gsam' (choose from {VARIANTS})"),
    (["--alpha-max", "0"],
     "argument --alpha-max: invalid value 0.0 (allowed: a number > 0, or 'auto')"),
    (["--alpha-max", "wide"],
     "argument --alpha-max: invalid value 'wide' (allowed: a number > 0, or 'auto')"),
    (["--alpha-expand-probes", "0"],
     "argument --alpha-expand-probes: invalid value 0 (allowed: an integer >= 1)"),
    (["--alpha-max", "auto", "--alpha-step", "3"], "argument --alpha-step: invalid value 3.0 "
     "(allowed: 0 < --alpha-step <= 2.0, the grid of --alpha-max auto)"),
    (["--alpha-max", "auto", "--alpha-expand-probes", "5", "--alpha", "2.6"],
     "argument --alpha: invalid value 2.6 (allowed: 0 <= --alpha <= 2.5 = 2 + "
     "--alpha-expand-probes x --alpha-step with --alpha-max auto)"),
    (["--alpha-step", "5"], "argument --alpha-step: invalid value 5.0 "
                            "(allowed: 0 < --alpha-step <= --alpha-max = 2.0)"),
    (["--alpha-step", "0"], "argument --alpha-step: invalid value 0.0 "
                            "(allowed: 0 < --alpha-step <= --alpha-max = 2.0)"),
    (["--alpha", "2.5"],
     "argument --alpha: invalid value 2.5 (allowed: 0 <= --alpha <= --alpha-max = 2.0)"),
    (["--alpha", "-0.1"],
     "argument --alpha: invalid value -0.1 (allowed: 0 <= --alpha <= --alpha-max = 2.0)"),
    (["--alpha-max", "1", "--alpha", "1.5"],
     "argument --alpha: invalid value 1.5 (allowed: 0 <= --alpha <= --alpha-max = 1.0)"),
    (["--alpha-search", "weekly"], "argument --alpha-search: invalid value 'weekly' "
     "(allowed: 'epoch', 'never' or an integer N >= 0 = every N updates)"),
    (["--alpha-search", "-3"], "argument --alpha-search: invalid value '-3' "
     "(allowed: 'epoch', 'never' or an integer N >= 0 = every N updates)"),
    (["--sam-variant", "fixed", "--alpha-search", "5"], "argument --alpha-search: invalid value "
     "'5' (allowed: 'never' with --sam-variant 'fixed': only 'xsam' searches α)"),
    (["--asam-eta", "-0.1"], "argument --asam-eta: invalid value -0.1 (allowed: --asam-eta >= 0)"),
]

# (overrides of the recipe's xsam config, the message after "fairseq-hydra-train: error: ");
# '+' adds a key the recipe's yaml does not set (hydra's rule)
HYDRA_CASES = [
    (["optimizer.rho=0"], "optimizer.rho: invalid value 0 (allowed: optimizer.rho > 0)"),
    (["optimizer.probe_rho=abc"],
     "optimizer.probe_rho: invalid value 'abc' (allowed: optimizer.probe_rho > 0)"),
    (["+optimizer.ascent_steps=0"],
     "optimizer.ascent_steps: invalid value 0 (allowed: an integer >= 1)"),
    (["optimizer.sam_variant=gsam"], "optimizer.sam_variant: invalid value 'gsam' "
                                     "(allowed: xsam, fixed, sam, msam, msam+, lsam, lsam+)"),
    (["+optimizer.alpha_max=-1"],
     "optimizer.alpha_max: invalid value -1 (allowed: a number > 0, or 'auto')"),
    (["+optimizer.alpha_expand_probes=0"],
     "optimizer.alpha_expand_probes: invalid value 0 (allowed: an integer >= 1)"),
    (["+optimizer.alpha_step=3"], "optimizer.alpha_step: invalid value 3 "
     "(allowed: 0 < optimizer.alpha_step <= optimizer.alpha_max = 2.0)"),
    (["+optimizer.alpha=2.5"], "optimizer.alpha: invalid value 2.5 "
     "(allowed: 0 <= optimizer.alpha <= optimizer.alpha_max = 2.0)"),
    (["optimizer.alpha_search=weekly"], "optimizer.alpha_search: invalid value 'weekly' "
     "(allowed: 'epoch', 'never' or an integer N >= 0 = every N updates)"),
    (["optimizer.sam_variant=fixed"], "optimizer.alpha_search: invalid value 'epoch' (allowed: "
     "'never' with optimizer.sam_variant 'fixed': only 'xsam' searches α)"),
    (["+optimizer.asam_eta=-1"],
     "optimizer.asam_eta: invalid value -1 (allowed: optimizer.asam_eta >= 0)"),
]


def fields_named(cases):
    out = set()
    for _, message in cases:
        option = message.split(":")[0].replace("argument ", "").replace("optimizer.", "")
        out.add(option.lstrip("-").replace("-", "_"))
    return out


def test_tables_cover_every_option_of_the_settings_table():
    """A new row with rules in fairseq_xsam.settings.OPTIONS needs a case here (both ways in)."""
    assert fields_named(CLI_CASES) == set(CHECKED)
    assert fields_named(HYDRA_CASES) == set(CHECKED)


def config_fields():
    from fairseq.optim.adam import FairseqAdamConfig

    from fairseq_xsam.fairseq.optimizer import XSAMAdamWConfig

    inherited = {f.name for f in dataclasses.fields(FairseqAdamConfig)}
    return {f.name: f for f in dataclasses.fields(XSAMAdamWConfig) if f.name not in inherited}


def test_the_config_dataclass_is_the_settings_table():
    """xsam_adamw's own fields are the table's rows: names in order, defaults, help."""
    fields = config_fields()
    assert list(fields) == list(settings.NAMES)
    for name, f in fields.items():
        option = settings.BY_NAME[name]
        assert f.default == option.config_default, name
        assert f.metadata["help"] == settings.help_text(name, "cli")
        assert "{" not in f.metadata["help"] and "}" not in f.metadata["help"], name
    validate({f: parse_text(f, fields[f].default) for f in CHECKED}, "cli")  # defaults valid


def test_pytorch_signature_is_the_settings_table():
    """XSAM's keywords are the table's PyTorch options, keyword-only, with its defaults."""
    params = inspect.signature(XSAM).parameters
    options = [p for p in params.values() if p.kind == inspect.Parameter.KEYWORD_ONLY]
    assert [p.name for p in options] == list(settings.PYTORCH)
    assert {p.name: p.default for p in options} == {n: settings.DEFAULTS[n]
                                                     for n in settings.PYTORCH}
    assert set(settings.NAMES) - set(settings.PYTORCH) == {"sam_local_ascent"}  # DDP only


def test_pytorch_class_and_xsam_adamw_have_the_same_default_for_every_shared_option():
    """The issue's requirement, read off the two objects users see (not off the table): the
    default of every XSAM keyword equals xsam_adamw's, in the value both use (the config holds
    alpha_max as text). Fails if either side drifts from the other."""
    fields = config_fields()
    signature = inspect.signature(XSAM).parameters
    shared = [name for name in signature if name in fields]
    assert shared == list(settings.PYTORCH)
    for name in shared:
        pytorch, fairseq = signature[name].default, parse_text(name, fields[name].default)
        assert (type(pytorch), pytorch) == (type(fairseq), fairseq), name
    # the paper's IWSLT14 values (Chen & Zhou, ICLR 2026, appendix D.3)
    assert (signature["rho"].default, signature["probe_rho"].default) == (0.15, 0.45)
    assert (signature["alpha_max"].default, signature["alpha_step"].default) == (2.0, 0.1)


def test_rules_read_only_options_checked_before_them():
    """validate() runs the rules in table order: a rule may only read options above it."""
    for i, option in enumerate(settings.OPTIONS):
        above = set(settings.NAMES[:i])
        for rule in option.rules:
            assert set(rule.reads) <= above, (option.name, rule.reads)
    for style in settings.STYLES:  # every help renders (no unknown {name})
        for name in settings.NAMES:
            assert "{" not in settings.help_text(name, style)


def test_options_module_does_not_import_the_optimizer_module():
    """No import cycle: optimizer.py imports options.py, never the other way round."""
    tree = ast.parse((ROOT / "fairseq_xsam" / "fairseq" / "options.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
            imported.update(f"{'.' * node.level}{node.module or ''}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert not any("optimizer" in name for name in imported), imported


@pytest.mark.parametrize("words,message", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_fairseq_train_stops_at_the_command_line(words, message, tmp_path, monkeypatch, capsys):
    """fairseq-train's entry point (fairseq_cli.train:cli_main) in this process."""
    from fairseq_cli import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [
        "fairseq-train", str(tmp_path / "no-data"), "--user-dir", USER_DIR, "--task",
        "translation", "--arch", "transformer", "--optimizer", "xsam_adamw",
        "--save-dir", str(tmp_path / "ck"), *words])
    with pytest.raises(SystemExit) as stop:
        train.cli_main()
    assert stop.value.code == 2
    out = capsys.readouterr()
    assert out.err == f"fairseq-train: error: {message}\n" and out.out == ""
    assert list(tmp_path.iterdir()) == []


def test_fairseq_train_console_script(tmp_path):
    """The installed ``fairseq-train`` program itself: exit status 2, one line, no traceback."""
    for words, message in (CLI_CASES[0], CLI_CASES[6]):
        out = subprocess.run(
            [os.path.join(BIN, "fairseq-train"), str(tmp_path / "no-data"), "--user-dir",
             USER_DIR, "--arch", "transformer", "--optimizer", "xsam_adamw", "--save-dir",
             str(tmp_path / "ck"), *words], capture_output=True, text=True, cwd=tmp_path,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
        assert (out.returncode, out.stderr, out.stdout) == (
            2, f"fairseq-train: error: {message}\n", "")
    assert list(tmp_path.iterdir()) == []


def test_fairseq_hydra_train_stops_when_the_config_is_composed(tmp_path):
    """fairseq-hydra-train's entry point (fairseq_cli.hydra_train:cli_main) once per row, in one
    worker process (hydra_cli_worker.py, next to this file). Hydra itself writes ``.hydra/`` and an empty
    ``hydra_train.log`` before any job code runs; nothing else may appear."""
    base = ["--config-dir", str(CONFIG_DIR), "--config-name", "xsam",
            f"task.data={tmp_path / 'no-data'}", f"checkpoint.save_dir={tmp_path / 'ck'}"]
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([base + overrides for overrides, _ in HYDRA_CASES]))
    run = tmp_path / "run"
    run.mkdir()
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("hydra_cli_worker.py")), str(cases),
         str(tmp_path / "results.json")], capture_output=True, text=True, cwd=run,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
             "FAIRSEQ_XSAM_USER_DIR": USER_DIR, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for (overrides, message), result in zip(HYDRA_CASES, results):
        assert result == {"code": 2, "stderr": f"fairseq-hydra-train: error: {message}\n"}, \
            overrides
    assert {p.name for p in run.iterdir()} <= {".hydra", "hydra_train.log"}
    assert not (tmp_path / "ck").exists()


def python_kwargs(words):
    """The XSAM keywords of a fairseq-train case (numbers as numbers, other text as text): the
    flag without dashes is the keyword."""
    kwargs = {}
    for flag, text in zip(words[::2], words[1::2]):
        name = flag[2:].replace("-", "_")
        if settings.BY_NAME[name].type is int:
            kwargs[name] = int(text) if text.isdigit() else text
        elif name in ("sam_variant", "alpha_search") or text == "auto":
            kwargs[name] = text
        else:
            try:
                kwargs[name] = float(text)
            except ValueError:
                kwargs[name] = text
    return kwargs


@pytest.mark.parametrize("words,message", [c for c in CLI_CASES if "invalid choice" not in c[1]],
                         ids=lambda c: " ".join(c) if isinstance(c, list) else "")
def test_pytorch_xsam_raises_the_same_rule(words, message):
    """Same value, same allowed range: the CLI text with the option names of XSAM(...)."""
    kwargs = python_kwargs(words)
    with pytest.raises(ValueError) as err:
        XSAM([torch.nn.Parameter(torch.ones(2))], torch.optim.SGD, lr=0.1, **kwargs)
    text = str(err.value)
    assert isinstance(err.value, OptionError) and "\n" not in text
    option, rest = message[len("argument "):].split(": invalid value ", 1)
    value, allowed = rest.split(" (allowed: ", 1)
    py_allowed = allowed
    for flag in sorted((settings.option_name(n, "cli") for n in settings.NAMES), key=len,
                       reverse=True):  # longest flags first: --alpha-max before --alpha
        py_allowed = py_allowed.replace(flag, flag[2:].replace("-", "_"))
    python_name = option[2:].replace("-", "_")
    assert text == f"Invalid {python_name} value: {value} (allowed: {py_allowed}"


# -- fairseq_xsam.recipes.base.check_alpha_options: alpha's upper bound is the settings' --------------------

def recipes_common():
    from fairseq_xsam.recipes import base

    return base


@pytest.mark.parametrize("opt,alpha,extra,error", [
    ("fixed", 2.0, [], None),
    ("fixed", 2.5, [], "argument --alpha: 2.5 (allowed: 0 <= alpha <= 2)"),
    ("fixed", 3.0, ["--alpha-max", "auto"], None),  # auto: up to 2 + 40 x 0.1 = 6
    ("fixed", 6.0, ["--max-update", "9", "--alpha-max", "auto"], None),
    ("fixed", 6.5, ["--alpha-max", "auto"], "argument --alpha: 6.5 (allowed: 0 <= alpha <= 6)"),
    ("xsam", 2.5, ["--alpha-max", "auto", "--alpha-expand-probes", "5"], None),
    ("xsam", 2.6, ["--alpha-max", "auto", "--alpha-expand-probes", "5"],
     "argument --alpha: 2.6 (allowed: 0 <= alpha <= 2.5)"),
    ("fixed", 3.0, ["--alpha-max", "3"], None),
    ("fixed", 3.0, ["--alpha-max", "auto", "--alpha-max", "2"],  # the last flag wins
     "argument --alpha: 3.0 (allowed: 0 <= alpha <= 2)"),
    ("fixed", 9.0, ["--alpha-max", "wide"], None),  # fairseq-train reports --alpha-max itself
    ("fixed", -0.1, ["--alpha-max", "wide"], "argument --alpha: -0.1 (allowed: 0 <= alpha)"),
    ("fixed", None, ["--alpha-max", "auto"], "OPT fixed needs --alpha A (0 <= A <= 6)"),
])
def test_recipe_alpha_check_follows_alpha_max_auto(opt, alpha, extra, error):
    import argparse

    class Stop(Exception):
        pass

    def fail(message):
        raise Stop(message)

    parser = argparse.ArgumentParser()
    parser.error = fail
    if error is None:
        recipes_common().check_alpha_options(parser, opt, alpha, None, extra)
    else:
        with pytest.raises(Stop) as stop:
            recipes_common().check_alpha_options(parser, opt, alpha, None, extra)
        assert str(stop.value).startswith(error), str(stop.value)


def test_recipe_train_accepts_an_alpha_that_alpha_max_auto_allows(capsys):
    from fairseq_xsam.recipes import iwslt14 as recipe
    assert recipe.main(["train", "fixed", "--alpha", "3", "--cpu", "--dry-run", "--",
                        "--alpha-max", "auto"]) == 0
    words = capsys.readouterr().out.split()
    assert words[words.index("--alpha") + 1] == "3.0" and words[-2:] == ["--alpha-max", "auto"]
    with pytest.raises(SystemExit) as stop:
        recipe.main(["train", "fixed", "--alpha", "3", "--cpu", "--dry-run"])
    assert stop.value.code == 2
    assert "argument --alpha: 3.0 (allowed: 0 <= alpha <= 2)" in capsys.readouterr().err


@pytest.mark.parametrize("words", [[], ["--rho", "0.05", "--probe-rho", "0.15", "--alpha-max",
                                        "auto", "--alpha", "2.5", "--alpha-search", "3"]])
def test_fairseq_train_checks_its_command_line_once(words, monkeypatch):
    """fairseq-train's path (parse_args_and_arch, then the config merge of add_defaults, as
    fairseq_cli.train does) runs the rules once; a config the parser never saw is still
    checked where it is merged."""
    from fairseq import options as fairseq_options
    from fairseq.dataclass.initialize import add_defaults
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from fairseq_xsam.fairseq import options as xsam_options

    calls = []
    real = xsam_options.validate
    monkeypatch.setattr(xsam_options, "validate",
                        lambda values, style, *a: calls.append(style) or real(values, style, *a))
    parser = fairseq_options.get_training_parser()
    args = fairseq_options.parse_args_and_arch(parser, [
        "data", "--user-dir", USER_DIR, "--task", "translation", "--arch", "transformer",
        "--optimizer", "xsam_adamw", *words])
    cfg = convert_namespace_to_omegaconf(args)
    add_defaults(cfg)
    assert calls == ["cli"]
    assert cfg.optimizer.rho == (0.05 if words else 0.15)
    changed = dict(cfg.optimizer)
    changed["rho"] = 0.07  # valid, but never parsed: the merge checks it
    xsam_options.check_config(changed)
    assert calls == ["cli", "hydra"]
