#!/usr/bin/env bash
# Installs fairseq-xsam and everything it needs into a virtual environment (default .venv).
# CPU machines: torch 2.13.0 (CPU build), fairseq-fixed 0.12.3.1 built against it.
# Facts behind each line: ../shared/ENVIRONMENT.md (fairseq 0.12.2 is broken on Python 3.11;
# --no-build-isolation keeps pip from building fairseq against a CUDA torch; --no-deps keeps
# out torchaudio, which fails to load beside torch 2.13).
#
# fairseq-fixed declares torchaudio and cffi, which are left out on purpose (torchaudio 2.11
# does not load beside torch 2.13; fairseq's code imports neither outside its notebooks). Its
# real dependencies are installed BEFORE it, so no later pip run re-checks it and prints pip's
# resolver "ERROR: ... fairseq-fixed requires torchaudio" lines. The end checks the result:
# every module the package, the recipes and the tests import, then `pip check` with exactly
# those two declared-but-omitted requirements accepted; anything else fails loudly (exit 1).
set -euo pipefail
VENV=${1:-.venv}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# matplotlib first: importing fairseq turns the root logger to DEBUG on stderr
MODULES="matplotlib, tensorboardX, torch, numpy, fairseq, hydra, omegaconf, bitarray, sacrebleu, \
sentencepiece, sklearn, scipy, regex, tqdm, yaml, packaging, pytest, xdist, sacremoses, subword_nmt, \
transformers, accelerate"
RUFF=ruff==0.17.6  # the linter .ci/run runs (configuration: pyproject.toml)
OMITTED='^fairseq-fixed [^ ]+ requires (torchaudio|cffi), which is not installed\.$'
pip_q() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
if ! "$PY" -m ruff --version >/dev/null 2>&1; then
  echo "[install] $RUFF (the linter)"
  pip_q "$RUFF"
fi
if ! "$PY" -c "import $MODULES" 2>/dev/null; then
  echo "[install] torch 2.13.0 (CPU) and build tools"
  pip_q torch==2.13.0 numpy cython setuptools wheel
  echo "[install] fairseq's runtime dependencies, BLEU, BPE, plotting and test tools"
  pip_q hydra-core==1.3.2 omegaconf==2.3.0 bitarray sacrebleu sentencepiece scikit-learn scipy \
        regex tqdm pyyaml packaging pytest pytest-xdist sacremoses subword-nmt matplotlib tensorboardX
  echo "[install] the hf extra: transformers, accelerate at the versions setup.py pins"
  PIN=$(mktemp)  # keeps pip on the CPU torch installed above
  echo "torch==2.13.0" > "$PIN"
  pip_q -c "$PIN" --no-build-isolation -e "$ROOT[hf]"
  rm -f "$PIN"
  echo "[install] fairseq-fixed 0.12.3.1 (compiles its extensions, about 2-3 minutes)"
  pip_q --no-build-isolation --no-deps fairseq-fixed==0.12.3.1
fi
pip_q --no-deps --no-build-isolation -e "$ROOT"
if ! "$PY" -c "import $MODULES, fairseq_xsam"; then
  echo "[install] FAILED: a module above does not import in $VENV" >&2
  exit 1
fi
broken=$("$PY" -m pip check 2>&1 | grep -Ev "$OMITTED" | grep -v '^No broken requirements' || true)
if [ -n "$broken" ]; then
  echo "[install] FAILED: pip check reports missing or conflicting packages:" >&2
  echo "$broken" >&2
  exit 1
fi
echo "[install] note: fairseq-fixed's declared torchaudio and cffi are not installed (not needed)"
"$PY" -c "import fairseq, fairseq_xsam, torch; print('[install] ready: torch', torch.__version__, 'fairseq', fairseq.__version__)"
