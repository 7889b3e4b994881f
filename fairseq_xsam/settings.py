"""Validation of XSAM's hyper-parameters: one table for the PyTorch class, fairseq's command line
and fairseq-hydra-train's config.

Every error is one line naming the option, the value and the allowed range; nothing is clamped.
The same rule gives, by where the value came from (``style``)::

    python  Invalid rho value: -1.0 (allowed: rho > 0)                      (ValueError)
    cli     argument --rho: invalid value -1.0 (allowed: --rho > 0)          (argparse's form)
    hydra   optimizer.rho: invalid value -1.0 (allowed: optimizer.rho > 0)

A new option, or a new form of a value, is one row of :data:`RULES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping

from .core import AUTO, AUTO_BASE_ALPHA_MAX, EDGE_GRID, EDGE_PROBES, VARIANTS, largest_alpha


@dataclass(frozen=True)
class Rule:
    """One check of one option. ``field`` is xsam_adamw's config field (``--rho`` on the command
    line, ``optimizer.rho`` in hydra), ``kwarg`` the keyword of :class:`fairseq_xsam.XSAM`.
    ``parse`` turns command-line or config text into the value (``ValueError`` if it cannot);
    ``valid(value, values)`` sees the values of the options checked before it (rows run in
    order); ``allowed(name, values)`` words the allowed range, naming options with ``name``."""

    field: str
    kwarg: str
    parse: Callable[[str], Any]
    valid: Callable[[Any, Mapping[str, Any]], bool]
    allowed: Callable[[Callable[[str], str], Mapping[str, Any]], str]


def _real(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def search_schedule(value):
    """``--alpha-search``/``search_every`` → 'epoch', 0 (never) or N > 0 (every N updates);
    None when unset; raises ValueError for anything else."""
    if value is None or value == "epoch":
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("epoch", "never"):
            return "epoch" if text == "epoch" else 0
        value = int(text)  # ValueError for other words
    if not _integer(value) or value < 0:
        raise ValueError(value)
    return value


def _search_form(value) -> bool:
    try:
        search_schedule(value)
    except (ValueError, TypeError):
        return False
    return True


def _searches_only_if_xsam(value, values) -> bool:
    schedule = search_schedule(value)
    return schedule in (None, 0) or VARIANTS[str(values["sam_variant"])].searches


def _positive(field):
    return Rule(field, field, float, lambda v, _: _real(v) and v > 0,
                lambda n, _: f"{n(field)} > 0")


def _alpha_max_text(text: str):
    text = text.strip().lower()
    return AUTO if text == AUTO else float(text)


def _grid_top(values) -> float:
    """The largest α of the base grid: --alpha-max, or 2 for the expanding search."""
    return AUTO_BASE_ALPHA_MAX if values["alpha_max"] == AUTO else values["alpha_max"]


def _step_allowed(n, o) -> str:
    if o["alpha_max"] == AUTO:
        return f"0 < {n('alpha_step')} <= {AUTO_BASE_ALPHA_MAX}, the grid of {n('alpha_max')} auto"
    return f"0 < {n('alpha_step')} <= {n('alpha_max')} = {o['alpha_max']}"


def _alpha_top(o) -> float:
    return largest_alpha(o["alpha_max"], o["alpha_step"], o["alpha_expand_probes"])


def _alpha_allowed(n, o) -> str:
    if o["alpha_max"] == AUTO:
        return (f"0 <= {n('alpha')} <= {_alpha_top(o):g} = {AUTO_BASE_ALPHA_MAX:g} + "
                f"{n('alpha_expand_probes')} x {n('alpha_step')} with {n('alpha_max')} auto")
    return f"0 <= {n('alpha')} <= {n('alpha_max')} = {o['alpha_max']}"


RULES = (
    _positive("rho"),
    _positive("probe_rho"),
    Rule("ascent_steps", "ascent_steps", int, lambda v, _: _integer(v) and v >= 1,
         lambda n, _: "an integer >= 1"),
    Rule("sam_variant", "variant", str, lambda v, _: isinstance(v, str) and v in VARIANTS,
         lambda n, _: ", ".join(VARIANTS)),
    Rule("alpha_max", "alpha_max", _alpha_max_text,
         lambda v, _: v == AUTO or (_real(v) and v > 0),
         lambda n, _: "a number > 0, or 'auto'"),
    Rule("alpha_expand_probes", "alpha_expand_probes", int, lambda v, _: _integer(v) and v >= 1,
         lambda n, _: "an integer >= 1"),
    Rule("alpha_step", "alpha_step", float,
         lambda v, o: _real(v) and 0 < v <= _grid_top(o), _step_allowed),
    Rule("alpha", "alpha", float, lambda v, o: _real(v) and 0 <= v <= _alpha_top(o),
         _alpha_allowed),
    Rule("alpha_search", "search_every", str, lambda v, _: _search_form(v),
         lambda n, _: "'epoch', 'never' or an integer N >= 0 = every N updates"),
    Rule("alpha_search", "search_every", str, _searches_only_if_xsam,
         lambda n, o: f"'never' with {n('sam_variant')} {o['sam_variant']!r}: only 'xsam' "
                      "searches α"),
    Rule("asam_eta", "asam_eta", float, lambda v, _: _real(v) and v >= 0,
         lambda n, _: f"{n('asam_eta')} >= 0"),
)
FIELDS = tuple(dict.fromkeys(rule.field for rule in RULES))
_KWARGS = {rule.field: rule.kwarg for rule in RULES}


def option_name(field: str, style: str) -> str:
    """How an option is named in ``style``: ``rho`` / ``--rho`` / ``optimizer.rho``."""
    if style == "cli":
        return "--" + field.replace("_", "-")
    if style == "hydra":
        return "optimizer." + field
    return _KWARGS.get(field, field)


class OptionError(ValueError):
    """An invalid option; ``str()`` is the one-line message, ``option``/``value`` say which."""

    def __init__(self, rule: Rule, value, values: Mapping[str, Any], style: str):
        self.option, self.value = option_name(rule.field, style), value
        allowed = rule.allowed(lambda f: option_name(f, style), values)
        if style == "python":
            text = f"Invalid {self.option} value: {value!r} (allowed: {allowed})"
        else:
            prefix = "argument " if style == "cli" else ""
            text = f"{prefix}{self.option}: invalid value {value!r} (allowed: {allowed})"
        super().__init__(text)


def parse_text(field: str, value):
    """A value given as text (command line, hydra override) in the option's type; text that does
    not parse is returned as it is, for :func:`validate` to report with the allowed range."""
    if not isinstance(value, str):
        return value
    rule = next(rule for rule in RULES if rule.field == field)
    try:
        return rule.parse(value)
    except ValueError:
        return value


def validate(values: Mapping[str, Any], style: str = "python") -> Dict[str, Any]:
    """Checks every option of ``values`` (by config field; all of :data:`FIELDS`) in table order
    and returns them; raises :class:`OptionError` on the first invalid one."""
    values = dict(values)
    for rule in RULES:
        if not rule.valid(values[rule.field], values):
            raise OptionError(rule, values[rule.field], values, style)
    return values


def check(*, rho, probe_rho, ascent_steps, variant, alpha, alpha_max, alpha_step, search,
          adaptive=False, asam_eta=0.01, alpha_expand_probes=40, cli: bool = False):
    """Raises ValueError on the first invalid setting; returns the parsed search schedule
    ('epoch', 0 or N; unset: 'epoch' on the command line and 1 in PyTorch for 'xsam', else 0)."""
    values = validate(dict(rho=rho, probe_rho=probe_rho, ascent_steps=ascent_steps,
                           sam_variant=variant, alpha=alpha,
                           alpha_max=parse_text("alpha_max", alpha_max),
                           alpha_expand_probes=alpha_expand_probes, alpha_step=alpha_step,
                           alpha_search=search, asam_eta=asam_eta),
                      "cli" if cli else "python")
    schedule = search_schedule(values["alpha_search"])
    if schedule is None:
        schedule = ("epoch" if cli else 1) if VARIANTS[variant].searches else 0
    return schedule


def parse_alpha_max(value, cli: bool = False):
    """``alpha_max``/``--alpha-max`` (a number or its text; a config holds text) → a float > 0,
    or 'auto' (the expanding search); ValueError with the rule's message otherwise."""
    parsed = parse_text("alpha_max", value)
    rule = next(rule for rule in RULES if rule.field == "alpha_max")
    if not rule.valid(parsed, {}):
        raise OptionError(rule, value, {}, "cli" if cli else "python")
    return parsed if parsed == AUTO else float(parsed)


def edge_advice(edge: str, alpha: float, alpha_max, alpha_expand_probes: int,
                cli: bool = False) -> str:
    """The one-time warning when a search's α* lies on the searched range's edge: which option
    to change (see :func:`fairseq_xsam.core.edge_of` for ``edge``)."""
    n = lambda o: option_name(o, "cli" if cli else "python")  # noqa: E731
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
