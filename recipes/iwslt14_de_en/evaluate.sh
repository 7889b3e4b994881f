#!/usr/bin/env bash
# Translate the IWSLT'14 De-En test set and score it (thin wrapper; logic in recipe.py).
#
#   evaluate.sh CKPT [options] [-- extra fairseq-generate args]
#   CKPT: a checkpoint file, or a run directory (uses checkpoints/checkpoint_best.pt)
# fairseq-generate --gen-subset test --beam 5 --remove-bpe --required-batch-size-multiple 1
# (fairseq's default multiple 8 silently drops sentences); fails unless every test sentence
# was translated. Reports fairseq's tokenized BLEU ("BLEU4 = ...", what fairseq and the paper
# report) and sacreBLEU on Moses-detokenized output, with its signature.
# Options (evaluate.sh --help lists all):
#   --data DIR (default: the run's data, else env DATA)   --cpu   --batch-size N (128)
#   --average-last N (average the run's last N epoch checkpoints, evaluate that)
#   --ref PATH... raw cased references (IWSLT14 de-en XML folder/files or text): sacreBLEU
#                 against them, case-insensitive; default: detokenized tokenized references
#   --expect-sentences N (6750 for IWSLT14)  --out DIR (default <run>/eval)  --dry-run
# Writes <run>/eval/generate-test.txt and <run>/eval/bleu.json.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../python.sh"
exec "$PYTHON" "$here/recipe.py" evaluate "$@"
