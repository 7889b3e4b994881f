#!/usr/bin/env bash
# The CPU demo: AdamW vs SAM vs XSAM on Multi30k German->English (data/multi30k), end to end
# through recipes/multi30k_de_en (demo preset): SentencePiece, fairseq-preprocess, three trainings,
# three test sets, sacreBLEU, report and plots under work/demo/. Options go to xsam-demo (fairseq_xsam/recipes/demo.py):
#   --quick (the tiny preset: a pipeline check, work/demo-quick/), --epochs N, --out DIR,
#   --threads N.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
exec .venv/bin/xsam-demo "$@"
