#!/usr/bin/env bash
# Installs fairseq-xsam and everything it needs into a virtual environment (default .venv).
# CPU machines: torch 2.13.0 (CPU build), fairseq-fixed 0.12.3.1 built against it.
# Facts behind each line: ../shared/ENVIRONMENT.md (fairseq 0.12.2 is broken on Python 3.11;
# --no-build-isolation keeps pip from building fairseq against a CUDA torch; --no-deps keeps
# out torchaudio, which fails to load beside torch 2.13).
set -euo pipefail
VENV=${1:-.venv}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_q() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
if ! "$PY" -c "import torch, fairseq, sacrebleu, sentencepiece, hydra, pytest, sacremoses, subword_nmt, matplotlib" 2>/dev/null; then
  echo "[install] torch 2.13.0 (CPU) and build tools"
  pip_q torch==2.13.0 numpy cython setuptools wheel
  echo "[install] fairseq-fixed 0.12.3.1 (compiles its extensions, about 2-3 minutes)"
  pip_q --no-build-isolation --no-deps fairseq-fixed==0.12.3.1
  echo "[install] fairseq's runtime dependencies, BLEU, BPE, plotting and test tools"
  pip_q hydra-core==1.3.2 omegaconf==2.3.0 bitarray sacrebleu sentencepiece scikit-learn scipy \
        regex tqdm pyyaml packaging pytest sacremoses subword-nmt matplotlib tensorboardX
fi
pip_q --no-deps --no-build-isolation -e "$ROOT"
"$PY" -c "import fairseq, fairseq_xsam, torch; print('[install] ready: torch', torch.__version__, 'fairseq', fairseq.__version__)"
