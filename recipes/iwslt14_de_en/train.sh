#!/usr/bin/env bash
# Train a Transformer on IWSLT'14 De-En with one optimizer (thin wrapper; logic in recipe.py).
#
#   train.sh OPT [SEED] [options] [-- extra fairseq-train args]
#   OPT: adamw | sam | xsam | fixed | msam | msam+ | lsam | lsam+   SEED: default 1
#   adamw = --optimizer adam; the others --optimizer xsam_adamw --sam-variant OPT
#   (--rho 0.15 --probe-rho 0.45; xsam searches alpha at the first update of every epoch).
# Options (train.sh --help lists all):
#   --data DIR (env DATA, default data-bin/iwslt14.tokenized.de-en)
#   --runs DIR (env RUNS, default runs/iwslt14_de_en)   --max-epoch N (default 50)
#   --rho R  --probe-rho R  --alpha-search epoch|never|N  --alpha A (required for fixed)
#   --ascent-steps K  --cpu  --no-fp16 (fp16 is the GPU default)  --no-eval-bleu
#   --average-last N (average the last N epoch checkpoints after training)
#   --keep-last-epochs K (default 10)  --dry-run (print the exact command, run nothing)
# Writes RUNS/<OPT>-seed<SEED>/{command.txt,train.log,checkpoints/}; rerunning resumes.
# Environment: PYTHON (default: the repository's .venv/bin/python, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../python.sh"
exec "$PYTHON" "$here/recipe.py" train "$@"
