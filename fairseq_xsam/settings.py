"""Validation of XSAM's hyper-parameters, shared by the PyTorch class and the fairseq options.

Every error is one line naming the option, the value and the allowed range; nothing is clamped.
"""

from __future__ import annotations

import math

from .core import AUTO, AUTO_BASE_ALPHA_MAX, EDGE_GRID, EDGE_PROBES, VARIANTS, largest_alpha


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


def parse_alpha_max(value, cli: bool = False):
    """``alpha_max``/``--alpha-max`` → a float > 0, or 'auto' (the expanding search)."""
    text = value.strip().lower() if isinstance(value, str) else None
    if text == AUTO:
        return AUTO
    number = value
    if text is not None:
        try:
            number = float(text)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not (
            math.isfinite(number) and number > 0):
        raise ValueError(f"Invalid {_name('alpha_max', cli)} value: {value!r} "
                         f"(allowed: a number > 0, or 'auto')")
    return float(number)


def check(*, rho, probe_rho, ascent_steps, variant, alpha, alpha_max, alpha_step, search,
          adaptive=False, asam_eta=0.01, alpha_expand_probes=40, cli: bool = False):
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
    alpha_max = parse_alpha_max(alpha_max, cli)
    if isinstance(alpha_expand_probes, bool) or not isinstance(alpha_expand_probes, int) or \
            alpha_expand_probes < 1:
        raise ValueError(f"Invalid {n('alpha_expand_probes')} value: {alpha_expand_probes!r} "
                         f"(allowed: an integer >= 1)")
    base = AUTO_BASE_ALPHA_MAX if alpha_max == AUTO else alpha_max
    bound = f"{n('alpha_max')} = {alpha_max}" if alpha_max != AUTO else \
        f"{base}, the grid of {n('alpha_max')} auto"
    if not (isinstance(alpha_step, (int, float)) and 0 < alpha_step <= base):
        raise ValueError(f"Invalid {n('alpha_step')} value: {alpha_step!r} "
                         f"(allowed: 0 < {n('alpha_step')} <= {bound})")
    top = largest_alpha(alpha_max, alpha_step, alpha_expand_probes)
    bound = f"{n('alpha_max')} = {alpha_max}" if alpha_max != AUTO else \
        f"{top:g} = 2 + {n('alpha_expand_probes')} x {n('alpha_step')} with {n('alpha_max')} auto"
    if not (isinstance(alpha, (int, float)) and 0 <= alpha <= top):
        raise ValueError(f"Invalid {n('alpha')} value: {alpha!r} "
                         f"(allowed: 0 <= {n('alpha')} <= {bound})")
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


def edge_advice(edge: str, alpha: float, alpha_max, alpha_expand_probes: int,
                cli: bool = False) -> str:
    """The one-time warning when a search's α* lies on the searched range's edge: which option
    to change (see :func:`fairseq_xsam.core.edge_of` for ``edge``)."""
    n = lambda o: _name(o, cli)  # noqa: E731
    head = (f"XSAM: the alpha search's maximum is at the edge of what it searched (alpha={alpha:g}"
            f"): the loss still rises there, so alpha is clamped and the maximum lies further on; ")
    if edge == EDGE_GRID:
        return head + (f"widen the search with {n('alpha_max')} auto (or a larger "
                       f"{n('alpha_max')} than {alpha_max:g}), or probe closer with a smaller "
                       f"{n('probe_rho')} (warned once)")
    if edge == EDGE_PROBES:
        return head + (f"{n('alpha_max')} auto used all {alpha_expand_probes} extra probes: raise "
                       f"{n('alpha_expand_probes')}, or probe closer with a smaller "
                       f"{n('probe_rho')} (warned once)")
    return head + (f"the next probe would turn past the direction opposite the ascent "
                   f"(alpha*phi > pi), so a wider search cannot help: probe closer with a "
                   f"smaller {n('probe_rho')} (warned once)")
