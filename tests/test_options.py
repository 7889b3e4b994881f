"""Every invalid xsam_adamw option stops fairseq-train and fairseq-hydra-train where they read
the options: exit status 2, one line ``PROG: error: ...`` naming the option, the value and the
allowed range, no traceback, nothing written, no data read (the data folder does not exist).
The plain-PyTorch XSAM raises ValueError with the same rule's wording."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fairseq_xsam import XSAM
from fairseq_xsam.settings import FIELDS, OptionError, RULES, parse_text, validate

ROOT = Path(__file__).resolve().parent.parent
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
    """A new row in fairseq_xsam.settings.RULES needs a case here (both ways in)."""
    assert fields_named(CLI_CASES) == set(FIELDS)
    assert fields_named(HYDRA_CASES) == set(FIELDS)


def test_every_checked_option_is_a_field_of_the_config_dataclass():
    import dataclasses

    from fairseq_xsam.fairseq.optimizer import XSAMAdamWConfig

    names = {f.name for f in dataclasses.fields(XSAMAdamWConfig)}
    assert set(FIELDS) <= names
    defaults = {f.name: f.default for f in dataclasses.fields(XSAMAdamWConfig)}
    validate({f: parse_text(f, defaults[f]) for f in FIELDS}, "cli")  # the defaults are valid


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
    worker process (tests/hydra_cli_worker.py). Hydra itself writes ``.hydra/`` and an empty
    ``hydra_train.log`` before any job code runs; nothing else may appear."""
    base = ["--config-dir", str(CONFIG_DIR), "--config-name", "xsam",
            f"task.data={tmp_path / 'no-data'}", f"checkpoint.save_dir={tmp_path / 'ck'}"]
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([base + overrides for overrides, _ in HYDRA_CASES]))
    run = tmp_path / "run"
    run.mkdir()
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "hydra_cli_worker.py"), str(cases),
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
    """The XSAM keywords of a fairseq-train case (numbers as numbers, other text as text)."""
    names = {rule.field: rule.kwarg for rule in RULES}
    kwargs = {}
    for flag, text in zip(words[::2], words[1::2]):
        field = flag[2:].replace("-", "_")
        if field == "sam_variant":
            kwargs["variant"] = text
        elif field == "alpha_search":
            kwargs["search_every"] = text
        elif field in ("ascent_steps", "alpha_expand_probes"):
            kwargs[names[field]] = int(text) if text.isdigit() else text
        elif field == "alpha_max" and text == "auto":
            kwargs[names[field]] = text
        else:
            try:
                kwargs[names[field]] = float(text)
            except ValueError:
                kwargs[names[field]] = text
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
    renames = (("--sam-variant", "variant"), ("--alpha-search", "search_every"),
               ("--alpha-expand-probes", "alpha_expand_probes"), ("--alpha-max", "alpha_max"), ("--alpha-step", "alpha_step"),
               ("--probe-rho", "probe_rho"), ("--asam-eta", "asam_eta"),
               ("--ascent-steps", "ascent_steps"), ("--alpha", "alpha"), ("--rho", "rho"))
    python_name, py_allowed = option, allowed
    for flag, name in renames:  # longest flags first: --alpha-max before --alpha
        python_name = name if python_name == flag else python_name
        py_allowed = py_allowed.replace(flag, name)
    assert text == f"Invalid {python_name} value: {value} (allowed: {py_allowed}"
