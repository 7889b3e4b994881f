"""fairseq-xsam: eXplicit Sharpness-Aware Minimization (Chen & Zhou, ICLR 2026) for fairseq and
plain PyTorch.

- PyTorch: ``from fairseq_xsam import XSAM``.
- fairseq: ``fairseq-train ... --user-dir <path of fairseq_xsam> --optimizer xsam_adamw``
  (fairseq imports this package after itself: the optimizer is registered then; importing
  the package for plain PyTorch neither imports nor patches fairseq).
"""

import sys as _sys

from .core import VARIANTS, alpha_grid
from .optim import XSAM

__all__ = ["XSAM", "VARIANTS", "alpha_grid"]
__version__ = "0.1.0"

if "fairseq" in _sys.modules:  # imported by fairseq (--user-dir, common.user_dir): register
    from . import fairseq as _fairseq_plugin  # noqa: F401  (registers xsam_adamw on import)
