#!/usr/bin/env bash
# Multi30k De-En data: joint SentencePiece BPE, fairseq-preprocess (joined dictionary) of train,
# valid and the three test sets (subsets test, test1, test2). Thin wrapper; logic in recipe.py.
#
#   prepare.sh [--preset study|demo|tiny] [--out DIR] [--vocab N] [--train-lines N] [--workers N]
# Default DIR: data-bin/multi30k_de_en/spm<VOCAB>[-train<N>]; an already prepared folder is kept.
# Environment: PYTHON (default: the repository's .venv/bin/python, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../python.sh"
exec "$PYTHON" "$here/recipe.py" prepare "$@"
