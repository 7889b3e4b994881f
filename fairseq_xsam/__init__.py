"""fairseq-xsam: eXplicit Sharpness-Aware Minimization (Chen & Zhou, ICLR 2026) for fairseq and
plain PyTorch.

- PyTorch: ``from fairseq_xsam import XSAM``.
- fairseq: ``fairseq-train ... --user-dir <path of fairseq_xsam> --optimizer xsam_adamw``
  (importing this package with fairseq installed registers the optimizer).
"""

from .core import VARIANTS, alpha_grid
from .optim import XSAM

__all__ = ["XSAM", "VARIANTS", "alpha_grid"]
__version__ = "0.1.0"

try:  # registering with fairseq is optional: the PyTorch class needs no fairseq
    import fairseq as _fairseq  # noqa: F401
except ImportError:  # pragma: no cover - exercised where fairseq is absent
    pass
else:
    from .fairseq import register as _register

    _register()
