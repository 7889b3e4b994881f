"""XSAM's options: one frozen table, :data:`OPTIONS`, and everything that derives from it.

Each :class:`Option` is one hyper-parameter with its one name, its type, its default, its help
and its rules. From the table come

- the PyTorch :class:`fairseq_xsam.XSAM`'s keyword defaults (:data:`DEFAULTS`) and its check
  (:func:`check_kwargs`);
- ``--optimizer xsam_adamw``'s config dataclass (:mod:`fairseq_xsam.fairseq.optimizer`), hence
  its command-line flags, its hydra fields and their help, and their checks
  (:mod:`fairseq_xsam.fairseq.options`);
- the README's option table (:func:`markdown_table`, printed by ``scripts/options_table.py``) and
  the option list of ``XSAM``'s docstring (:func:`describe`);
- every error message (:class:`OptionError`).

One name per option everywhere: ``probe_rho`` is ``XSAM(probe_rho=...)``, ``--probe-rho`` and
``optimizer.probe_rho`` (:func:`option_name`). One default per option everywhere: the paper's
IWSLT14 settings (Chen & Zhou, ICLR 2026, appendix D.3: rho = 0.15, rho' = 0.45, alpha searched
on the grid 0, 0.1, ..., 2). One exception is by design: an unset ``alpha_search`` searches at
the first update of every epoch in fairseq, which counts epochs, and every step in PyTorch, which
does not (:data:`UNSET_SEARCH`).

Every error is one line naming the option, the value and the allowed range; nothing is clamped.
The same rule gives, by where the value came from (``style``)::

    python  Invalid rho value: -1.0 (allowed: rho > 0)                      (ValueError)
    cli     argument --rho: invalid value -1.0 (allowed: --rho > 0)          (argparse's form)
    hydra   optimizer.rho: invalid value -1.0 (allowed: optimizer.rho > 0)

Each entry point checks where its values come in: ``XSAM(...)`` (:func:`check_kwargs`),
fairseq-train's command line while it is parsed and fairseq-hydra-train's config where it is
merged into ``xsam_adamw``'s dataclass (:mod:`fairseq_xsam.fairseq.options`). What they pass on
is not checked again: ``xsam_adamw`` builds its ``XSAM`` from the checked values
(:func:`resolve`, ``XSAM.from_checked``).

A new option, or a new form of a value, is one row of :data:`OPTIONS`. This module imports
neither fairseq nor anything that does.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from .core import AUTO, AUTO_BASE_ALPHA_MAX, EDGE_GRID, EDGE_PROBES, VARIANTS, largest_alpha

STYLES = ("python", "cli", "hydra")
Namer = Callable[[str], str]


@dataclass(frozen=True)
class Rule:
    """One check of one option. ``valid(value, values)`` may read the options named in
    ``reads``, which stand above it in :data:`OPTIONS` (rules run in table order, so those are
    already checked); ``allowed(name, values)`` words the allowed range, naming options with
    ``name``."""

    valid: Callable[[Any, Mapping[str, Any]], bool]
    allowed: Callable[[Namer, Mapping[str, Any]], str]
    reads: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Option:
    """One hyper-parameter.

    ``name`` is its one name (the keyword of ``XSAM``, the field of ``xsam_adamw``'s config, the
    flag with dashes); ``type`` the config field's type (``alpha_max`` holds text: a number or
    'auto'); ``default`` the value, the same for every entry point; ``help`` a template in which
    ``{other_option}`` becomes that option's name as the entry point spells it; ``parse`` turns
    command-line or config text into the value (ValueError if it cannot; default ``type``);
    ``choices`` the command line's choices; ``pytorch`` False for an option only fairseq has."""

    name: str
    type: type
    default: Any
    help: str
    rules: Tuple[Rule, ...] = ()
    parse: Optional[Callable[[str], Any]] = None
    choices: Tuple[str, ...] = ()
    pytorch: bool = True

    @property
    def config_default(self):
        """The default as the config field holds it (``alpha_max``: the text "2.0")."""
        if self.default is None or isinstance(self.default, self.type):
            return self.default
        return self.type(self.default)

    def from_text(self, text: str):
        return (self.parse or self.type)(text)


# -- the forms of values --------------------------------------------------------------------------

def _real(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def search_schedule(value):
    """``alpha_search`` → 'epoch', 0 (never) or N > 0 (every N updates); None when unset;
    raises ValueError for anything else."""
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


def _alpha_max_text(text: str):
    text = text.strip().lower()
    return AUTO if text == AUTO else float(text)


# -- the rules ---------------------------------------------------------------------------------

def _positive(name: str) -> Rule:
    return Rule(lambda v, _: _real(v) and v > 0, lambda n, _: f"{n(name)} > 0")


def _integer_at_least_one() -> Rule:
    return Rule(lambda v, _: _integer(v) and v >= 1, lambda n, _: "an integer >= 1")


def _grid_top(values) -> float:
    """The largest α of the base grid: alpha_max, or 2 for the expanding search."""
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


def _searches_only_if_xsam(value, values) -> bool:
    return search_schedule(value) in (None, 0) or VARIANTS[str(values["sam_variant"])].searches


#: When an unset ``alpha_search`` searches for ``sam_variant`` xsam, by style: fairseq counts
#: epochs (the first update of each), plain PyTorch does not unless told (``begin_epoch``), so
#: there it searches every step. The other variants never search.
UNSET_SEARCH = MappingProxyType({"python": 1, "cli": "epoch", "hydra": "epoch", "hf": "epoch"})
_UNSET_SEARCH_WORDS = {"python": "1 (every step)", "cli": "'epoch'", "hydra": "'epoch'",
                       "hf": "'epoch'"}

# -- the table -----------------------------------------------------------------------------------

OPTIONS: Tuple[Option, ...] = (
    Option("rho", float, 0.15,
           "total ascent radius rho > 0 (paper, IWSLT14: 0.15); each ascent step moves rho/k",
           (_positive("rho"),)),
    Option("probe_rho", float, 0.45,
           "probe radius rho' > 0 of the alpha search (paper, IWSLT14: 0.45; usually 2-3 rho)",
           (_positive("probe_rho"),)),
    Option("ascent_steps", int, 1,
           "ascent steps k >= 1; an update costs k+1 forward/backward passes",
           (_integer_at_least_one(),)),
    Option("sam_variant", str, "xsam",
           "descent direction: " + ", ".join(VARIANTS) + " (xsam searches alpha; fixed uses "
           "{alpha}; sam/msam/msam+/lsam/lsam+ are the paper's baselines)",
           (Rule(lambda v, _: isinstance(v, str) and v in VARIANTS,
                 lambda n, _: ", ".join(VARIANTS)),),
           choices=tuple(VARIANTS)),
    Option("alpha_max", str, 2.0,
           "largest alpha searched (> 0), or 'auto': search 0..2, then, while the loss still "
           "rises, go on in steps of {alpha_step} up to the direction opposite the ascent "
           "(alpha*phi <= pi) and at most {alpha_expand_probes} extra probes",
           (Rule(lambda v, _: v == AUTO or (_real(v) and v > 0),
                 lambda n, _: "a number > 0, or 'auto'"),),
           parse=_alpha_max_text),
    Option("alpha_step", float, 0.1,
           "alpha grid step, 0 < step <= {alpha_max} (0.1 and 2.0 give 21 probes)",
           (Rule(lambda v, o: _real(v) and 0 < v <= _grid_top(o), _step_allowed,
                 reads=("alpha_max",)),)),
    Option("alpha_expand_probes", int, 40,
           "{alpha_max} auto: the most extra probes (forward passes) past alpha = 2 per search, "
           ">= 1 (40 with step 0.1 reach alpha = 6)",
           (_integer_at_least_one(),)),
    Option("alpha", float, 1.0,
           "interpolation factor alpha in [0, {alpha_max}] (auto: up to 2 + "
           "{alpha_expand_probes} x {alpha_step}): fixed for {sam_variant} fixed, initial value "
           "for xsam (1 = SAM's direction, 0 = the ascent direction)",
           (Rule(lambda v, o: _real(v) and 0 <= v <= _alpha_top(o), _alpha_allowed,
                 reads=("alpha_max", "alpha_step", "alpha_expand_probes")),)),
    Option("alpha_search", str, None,
           "when to search alpha: 'epoch' (first update of every epoch), 'never', or N = every "
           "N updates; unset: {unset_search} for xsam, 'never' for the other variants",
           (Rule(lambda v, _: _search_form(v),
                 lambda n, _: "'epoch', 'never' or an integer N >= 0 = every N updates"),
            Rule(_searches_only_if_xsam,
                 lambda n, o: f"'never' with {n('sam_variant')} {o['sam_variant']!r}: only "
                              "'xsam' searches α", reads=("sam_variant",)))),
    Option("adaptive", bool, False,
           "ASAM's adaptive ascent: scale it element-wise by abs(w) + {asam_eta}"),
    Option("asam_eta", float, 0.01, "eta of ASAM (>= 0)",
           (Rule(lambda v, _: _real(v) and v >= 0, lambda n, _: f"{n('asam_eta')} >= 0"),)),
    Option("sam_local_ascent", bool, False,
           "data parallel: each worker ascends along its own gradient (no all-reduce in the "
           "ascent passes) and the workers' descent gradients are averaged once; probe losses "
           "are still summed over workers, so all pick the same alpha. Default: every pass is "
           "all-reduced, as the trainer's pass", pytorch=False),
)

BY_NAME: Mapping[str, Option] = MappingProxyType({o.name: o for o in OPTIONS})
NAMES: Tuple[str, ...] = tuple(BY_NAME)
#: The keywords of ``XSAM`` (fairseq's ``sam_local_ascent`` is about data parallel training).
PYTORCH: Tuple[str, ...] = tuple(o.name for o in OPTIONS if o.pytorch)
#: The options with rules, in the order they are checked.
CHECKED: Tuple[str, ...] = tuple(o.name for o in OPTIONS if o.rules)
DEFAULTS: Mapping[str, Any] = MappingProxyType({o.name: o.default for o in OPTIONS})


# -- names, messages, help ----------------------------------------------------------------------

def option_name(name: str, style: str) -> str:
    """How an option is named in ``style``: ``rho`` / ``--rho`` / ``optimizer.rho``."""
    if style == "cli":
        return "--" + name.replace("_", "-")
    if style == "hydra":
        return "optimizer." + name
    return name


class OptionError(ValueError):
    """An invalid option; ``str()`` is the one-line message, ``option``/``value`` say which."""

    def __init__(self, name: str, rule: Rule, value, values: Mapping[str, Any], style: str):
        self.option, self.value = option_name(name, style), value
        allowed = rule.allowed(lambda o: option_name(o, style), values)
        if style == "python":
            text = f"Invalid {self.option} value: {value!r} (allowed: {allowed})"
        else:
            prefix = "argument " if style == "cli" else ""
            text = f"{prefix}{self.option}: invalid value {value!r} (allowed: {allowed})"
        super().__init__(text)


def help_text(name: str, style: str = "cli") -> str:
    """The option's help, naming the other options as ``style`` does."""
    names = {other: option_name(other, style) for other in NAMES}
    return BY_NAME[name].help.format(**names, unset_search=_UNSET_SEARCH_WORDS[style])


def markdown_table() -> str:
    """The README's option table (fairseq's flags; the PyTorch keywords are the same names)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for o in OPTIONS:
        default = "(per variant)" if o.default is None else f"`{o.config_default}`"
        rows.append(f"| `{option_name(o.name, 'cli')}` | {default} | {help_text(o.name)} |")
    return "\n".join(rows)


def describe(style: str = "python", indent: str = "        ") -> str:
    """The options as a docstring's argument list (``XSAM``'s), one entry per option."""
    lines = []
    for o in OPTIONS:
        if style == "python" and not o.pytorch:
            continue
        default = "unset" if o.default is None else repr(o.default)
        lines.append(textwrap.fill(f"{option_name(o.name, style)} (default {default}): "
                                   f"{help_text(o.name, style)}", width=96,
                                   initial_indent=indent, subsequent_indent=indent + "    "))
    return "\n".join(lines)


# -- checking ------------------------------------------------------------------------------------

def parse_text(name: str, value):
    """A value given as text (command line, hydra override) in the option's type; text that does
    not parse is returned as it is, for :func:`validate` to report with the allowed range."""
    option = BY_NAME[name]
    if not isinstance(value, str) or option.type is bool:
        return value
    try:
        return option.from_text(value)
    except ValueError:
        return value


def validate(values: Mapping[str, Any], style: str = "python",
             names: Sequence[str] = CHECKED) -> Dict[str, Any]:
    """Checks the options ``names`` (all of :data:`CHECKED` unless told) of ``values`` in table
    order and returns the values; raises :class:`OptionError` on the first invalid one. The
    values of the options a rule reads must be there."""
    values = dict(values)
    for name in CHECKED:
        if name not in names:
            continue
        for rule in BY_NAME[name].rules:
            if not rule.valid(values[name], values):
                raise OptionError(name, rule, values[name], values, style)
    return values


def resolve(values: Mapping[str, Any], style: str) -> Dict[str, Any]:
    """Checked values in the form the optimizer keeps them: ``alpha_max`` a float or 'auto',
    ``alpha_search`` the schedule ('epoch', 0 or N; unset: :data:`UNSET_SEARCH` for xsam, else
    0), ``sam_variant`` a str (fairseq's config holds an enum member). Checks nothing."""
    out = dict(values)
    out["sam_variant"] = str(out["sam_variant"])
    alpha_max = parse_text("alpha_max", out["alpha_max"])
    out["alpha_max"] = alpha_max if alpha_max == AUTO else float(alpha_max)
    schedule = search_schedule(out["alpha_search"])
    if schedule is None:
        schedule = UNSET_SEARCH[style] if VARIANTS[out["sam_variant"]].searches else 0
    out["alpha_search"] = schedule
    return out


def check_kwargs(given: Mapping[str, Any], entry: str = "python") -> Dict[str, Any]:
    """The PyTorch entry point: ``XSAM``'s options (those not given take :data:`DEFAULTS`)
    checked and resolved (:func:`resolve`). A number option given as text is an error; the text
    options (``alpha_max='auto'`` or '3', ``alpha_search='epoch'``) are read as fairseq reads
    them. ``entry`` 'hf' (the Trainer, which counts epochs) searches every epoch when
    ``alpha_search`` is unset; messages name the options as Python keywords either way."""
    values = {name: DEFAULTS[name] for name in PYTORCH}
    values.update(given)
    for name in PYTORCH:
        if BY_NAME[name].type is str:
            values[name] = parse_text(name, values[name])
    return resolve(validate(values, "python"), entry)


def largest_allowed_alpha(given: Mapping[str, Any], style: str = "cli") -> float:
    """The upper bound of ``alpha`` for the grid options given (text or values; the others take
    :data:`DEFAULTS`): ``alpha_max``, or 2 + ``alpha_expand_probes`` x ``alpha_step`` under
    ``alpha_max`` 'auto'. Raises :class:`OptionError` if those options are invalid."""
    grid = ("alpha_max", "alpha_step", "alpha_expand_probes")
    values = {name: parse_text(name, given.get(name, DEFAULTS[name])) for name in grid}
    return _alpha_top(validate(values, style, names=grid))


def parse_alpha_max(value, cli: bool = False):
    """``alpha_max``/``--alpha-max`` (a number or its text; a config holds text) → a float > 0,
    or 'auto' (the expanding search); ValueError with the rule's message otherwise."""
    parsed = parse_text("alpha_max", value)
    for rule in BY_NAME["alpha_max"].rules:
        if not rule.valid(parsed, {}):
            raise OptionError("alpha_max", rule, value, {}, "cli" if cli else "python")
    return parsed if parsed == AUTO else float(parsed)


def edge_advice(edge: str, alpha: float, alpha_max, alpha_expand_probes: int,
                style: str = "python") -> str:
    """The one-time warning when a search's α* lies on the searched range's edge: which option
    to change (see :func:`fairseq_xsam.core.edge_of` for ``edge``)."""
    n = lambda o: option_name(o, style)  # noqa: E731
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
