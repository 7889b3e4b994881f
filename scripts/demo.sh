#!/usr/bin/env bash
# The CPU demo: AdamW vs XSAM-AdamW on Multi30k German->English (data/multi30k), end to end:
# SentencePiece, fairseq-preprocess, two trainings, beam search, sacreBLEU, report and plot
# under work/demo/ (about 11 minutes on 2 cores). Options go to scripts/demo.py:
#   --quick (tiny pipeline check, about a minute, work/demo-quick/), --epochs N, --out DIR,
#   --threads N.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
exec .venv/bin/python scripts/demo.py "$@"
