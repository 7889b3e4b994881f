#!/usr/bin/env bash
# Every GPU check of fairseq-xsam in one command, for a machine with one CUDA GPU and no network
# (thin wrapper; fairseq_xsam/bench/gpu_check.py does the work and lists the phases: --help).
#
#   bash scripts/gpu_check.sh [--wheels DIR] [--out DIR] [--budget SECONDS] [--dry-run] [--smoke]
#
# --wheels DIR: fairseq-fixed and friends as wheels (offline; scripts/install_gpu.sh --download)
# --out DIR: report.md, results.json, logs.tar.gz (default docs/results/gpu/)
# --budget SECONDS: all phases together (default 480)   --dry-run: print the plan, exit 0
# --smoke: every phase on the CPU with a tiny model (CI)
# Python: $PYTHON if set, else the repository's .venv/bin/python if present, else python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../recipes/python.sh"
# the package from this checkout, installed or not (a GPU machine may only have /tmp/site)
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m fairseq_xsam.bench.gpu_check "$@"
