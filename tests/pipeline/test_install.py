"""scripts/install.sh's logic, against a stand-in ``python`` that records what it is asked and
answers the import and ``pip check`` questions as told (a real install takes minutes): quiet
when all is there, loud (exit 1, the reason on stderr) when something is missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OMITTED = ("fairseq-fixed 0.12.3.1 requires cffi, which is not installed.\n"
           "fairseq-fixed 0.12.3.1 requires torchaudio, which is not installed.\n")

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
if [ "$1 $2 $3" = "-m pip check" ]; then printf '%s' "$FAKE_PIP_CHECK"; [ -z "$FAKE_PIP_CHECK" ]; exit; fi
if [ "$1 $2" = "-m pip" ]; then exit 0; fi
if [ "$1" = "-c" ]; then
  n=$(cat "$FAKE_COUNT" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE_COUNT"
  if [ "$n" -lt "$FAKE_IMPORT_FAILS" ]; then echo "ModuleNotFoundError: No module named 'x'" >&2; exit 1; fi
fi
exit 0
"""


def install(tmp_path, pip_check="", import_fails=0):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, "FAKE_LOG": str(log), "FAKE_PIP_CHECK": pip_check,
           "FAKE_COUNT": str(tmp_path / "count"), "FAKE_IMPORT_FAILS": str(import_fails)}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), str(venv)],
                         capture_output=True, text=True, env=env)
    return out, log.read_text().splitlines()


def pip_installs(calls):
    return [c for c in calls if c.startswith("-m pip install")]


def test_fresh_install_order_keeps_pip_from_rechecking_fairseq(tmp_path):
    out, calls = install(tmp_path, pip_check=OMITTED, import_fails=1)
    assert out.returncode == 0, out.stderr
    assert "ERROR" not in out.stdout + out.stderr
    installs = pip_installs(calls)
    deps = next(i for i, c in enumerate(installs) if "hydra-core==1.3.2" in c)
    fairseq = next(i for i, c in enumerate(installs) if "fairseq-fixed==0.12.3.1" in c)
    # pip re-checks an installed package only when one of its requirements is installed after
    # it: fairseq-fixed (its torchaudio and cffi deliberately missing) comes after its deps
    assert "--no-deps" in installs[fairseq] and "--no-build-isolation" in installs[fairseq]
    assert deps < fairseq == len(installs) - 2
    assert "-e" in installs[-1].split() and "--no-deps" in installs[-1]
    assert "fairseq-fixed's declared torchaudio and cffi are not installed" in out.stdout


def test_existing_environment_installs_only_the_package(tmp_path):
    out, calls = install(tmp_path, pip_check=OMITTED)
    assert out.returncode == 0, out.stderr
    assert len(pip_installs(calls)) == 1 and "-e" in pip_installs(calls)[0].split()


def test_a_missing_requirement_fails_loudly(tmp_path):
    broken = OMITTED + "sacrebleu 2.5.1 requires portalocker, which is not installed.\n"
    out, _ = install(tmp_path, pip_check=broken)
    assert out.returncode == 1
    assert "[install] FAILED: pip check reports" in out.stderr
    assert "sacrebleu 2.5.1 requires portalocker" in out.stderr and "torchaudio" not in out.stderr
    assert "ready" not in out.stdout


def test_a_module_that_does_not_import_fails_loudly(tmp_path):
    out, _ = install(tmp_path, pip_check=OMITTED, import_fails=2)  # still broken after pip
    assert out.returncode == 1
    assert "No module named" in out.stderr and "[install] FAILED: a module" in out.stderr
