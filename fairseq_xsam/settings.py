"""Validation of XSAM's hyper-parameters, shared by the PyTorch class and the fairseq options.

Every error is one line naming the option, the value and the allowed range; nothing is clamped.
"""

from __future__ import annotations

import math

from .core import VARIANTS


def _name(option: str, cli: bool) -> str:
    return "--" + option.replace("_", "-") if cli else option


def parse_search(value, cli: bool = False):
    """``search_every``/``--alpha-search`` → 'epoch', 0 (never) or N > 0 (every N updates)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "epoch":
            return "epoch"
        if text == "never":
            return 0
        try:
            value = int(text)
        except ValueError:
            raise ValueError(
                f"Invalid {_name('alpha_search' if cli else 'search_every', cli)} value: {value!r} "
                "(allowed: 'epoch', 'never' or an integer N >= 0 = every N updates)") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"Invalid {_name('alpha_search' if cli else 'search_every', cli)} value: {value!r} "
            "(allowed: 'epoch', 'never' or an integer N >= 0 = every N updates)")
    return value


def check(*, rho, probe_rho, ascent_steps, variant, alpha, alpha_max, alpha_step, search,
          adaptive=False, asam_eta=0.01, cli: bool = False):
    """Raises ValueError on the first invalid setting; returns the parsed search schedule."""
    n = lambda o: _name(o, cli)  # noqa: E731

    def positive(option, value):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"Invalid {n(option)} value: {value!r} (allowed: {n(option)} > 0)")

    positive("rho", rho)
    positive("probe_rho", probe_rho)
    if isinstance(ascent_steps, bool) or not isinstance(ascent_steps, int) or ascent_steps < 1:
        raise ValueError(f"Invalid {n('ascent_steps')} value: {ascent_steps!r} "
                         f"(allowed: an integer >= 1)")
    if variant not in VARIANTS:
        raise ValueError(f"Invalid {n('sam_variant' if cli else 'variant')} value: {variant!r} "
                         f"(allowed: {', '.join(VARIANTS)})")
    positive("alpha_max", alpha_max)
    if not (isinstance(alpha_step, (int, float)) and 0 < alpha_step <= alpha_max):
        raise ValueError(f"Invalid {n('alpha_step')} value: {alpha_step!r} "
                         f"(allowed: 0 < {n('alpha_step')} <= {n('alpha_max')} = {alpha_max})")
    if not (isinstance(alpha, (int, float)) and 0 <= alpha <= alpha_max):
        raise ValueError(f"Invalid {n('alpha')} value: {alpha!r} "
                         f"(allowed: 0 <= {n('alpha')} <= {n('alpha_max')} = {alpha_max})")
    if not (isinstance(asam_eta, (int, float)) and math.isfinite(asam_eta) and asam_eta >= 0):
        raise ValueError(f"Invalid {n('asam_eta')} value: {asam_eta!r} (allowed: >= 0)")
    schedule = parse_search(search, cli)
    if schedule is None:
        schedule = "epoch" if (cli and VARIANTS[variant].searches) else (
            1 if VARIANTS[variant].searches else 0)
    if schedule != 0 and not VARIANTS[variant].searches:
        raise ValueError(
            f"Invalid {n('alpha_search' if cli else 'search_every')} value: {search!r} with "
            f"{n('sam_variant' if cli else 'variant')} {variant!r}: only 'xsam' searches α "
            f"(allowed here: {'never' if cli else '0 or None'})")
    return schedule
