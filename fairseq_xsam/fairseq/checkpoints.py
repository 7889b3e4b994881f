"""fairseq checkpoints under torch's safe loader: the few non-tensor types they hold, allowed.

torch >= 2.6 loads with ``weights_only=True``: its unpickler rebuilds tensors, containers and
plain values and refuses every other global, so a file can no longer run code while it loads.
fairseq 0.12 calls ``torch.load`` with that default. Its checkpoints hold only these other
types, found with ``torch.serialization.get_unsafe_globals_in_checkpoint`` (and a BUILD check:
the dtype classes below are never named in the file) over real checkpoints of fairseq-train with
``xsam_adamw`` and stock ``adam``, fp32 / ``--fp16`` / ``--amp``, with and without ``--eval-bleu``,
averaged checkpoints and fairseq-hydra-train; ``tests/fairseq/test_safe_loading.py`` writes them again
and checks that each loads with exactly this list:

- ``argparse.Namespace``: ``fairseq-train`` parses its command line into a Namespace and
  ``convert_namespace_to_omegaconf`` stores it as ``cfg.model``, ``cfg.task``, ``cfg.criterion``,
  ``cfg.optimizer``, ``cfg.lr_scheduler`` (the ``args`` of older checkpoints too). In every
  checkpoint of fairseq-train and of the averages of those; fairseq-hydra-train's have none.
- numpy arrays, ``numpy.ndarray`` rebuilt by ``numpy._core.multiarray._reconstruct`` with a
  ``numpy.dtype``: the translation task's ``--eval-bleu`` logs its n-gram counts as int64 arrays
  (``metrics.log_scalar("_bleu_counts", np.array(counts))``) and fairseq saves the meters
  (``extra_state["metrics"]``): every checkpoint of an ``--eval-bleu`` run, as the IWSLT14 recipe.
- the dtype's class (``numpy.dtypes.Int64DType`` on numpy >= 1.25, ``numpy.dtype[int64]``
  before): ``numpy.dtype(...)`` returns an instance of it and the pickle then sets its state,
  which torch allows only for listed classes. Registered for the bool, integer, float and complex
  dtypes a logged metric can have, not for ``object``.
- ``numpy._core.multiarray.scalar``: a numpy number (``np.float64``...) in a logged metric; fairseq
  keeps a meter's values as the task gives them. Same numpy family as the arrays.

numpy 2 names its module ``numpy._core``, numpy 1 ``numpy.core``; a checkpoint names whichever
wrote it, so both names are registered for the installed functions.

Everything else still fails to load, with torch's error naming the global, and none of its code
runs. :func:`load` is the plugin's own ``torch.load`` for fairseq checkpoints (checkpoint
averaging, tests); fairseq's loaders (resume, ``fairseq-generate --user-dir``, the scripts) use
torch's default, which this registration covers.
"""

from __future__ import annotations

import argparse
import pickle

import torch


class CheckpointRefused(pickle.UnpicklingError):
    """A file holds a pickled object that is not among the types fairseq checkpoints hold."""


def safe_globals() -> list:
    """The allowlist for ``torch.serialization.add_safe_globals`` (see the module docstring)."""
    import numpy as np

    try:
        multiarray = np._core.multiarray  # numpy >= 2 (1.26 has a stub without these)
        multiarray._reconstruct  # noqa: B018
    except AttributeError:
        multiarray = np.core.multiarray  # numpy 1.x
    allowed = [argparse.Namespace, np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        function = getattr(multiarray, name)
        allowed += [(function, f"numpy.core.multiarray.{name}"),
                    (function, f"numpy._core.multiarray.{name}")]
    codes = "?bhilqBHILQefdgFDG"  # bool, signed/unsigned ints, floats, complex: every width
    allowed += sorted({type(np.dtype(code)) for code in codes}, key=str)
    return allowed


def register() -> None:
    """Allows fairseq checkpoints for torch's safe loader (idempotent: torch keeps a set)."""
    torch.serialization.add_safe_globals(safe_globals())


def load(path, map_location="cpu"):
    """``torch.load`` of a fairseq checkpoint with ``weights_only=True``.

    Raises :class:`CheckpointRefused` with one line naming the file and what it holds when it is
    not a fairseq checkpoint; nothing of the file has run then.
    """
    register()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = next((line.split("WeightsUnpickler error:", 1)[-1].strip() for line in lines
                       if "WeightsUnpickler error:" in line or "Unsupported global" in line),
                      lines[-1] if lines else type(err).__name__)
        raise CheckpointRefused(
            f"{path}: not loaded: it holds a pickled object fairseq checkpoints do not "
            f"({reason.split('. ')[0]}); load it with weights_only=False only if you trust "
            f"its source") from None
