"""``xsam_adamw``'s options checked where fairseq reads them, before any data is loaded.

The rules are those of :data:`fairseq_xsam.settings.OPTIONS` (one table, one wording); this
module only connects them to fairseq's two ways in, each checked once where its values come in:

- ``fairseq-train`` (and every tool using ``options.parse_args_and_arch``):
  :func:`check_while_parsing` runs from ``XSAMAdamW.add_args``, i.e. only when the command line
  chose ``--optimizer xsam_adamw``. A bad value ends the program the way argparse does, on one
  line and with exit status 2: ``fairseq-train: error: argument --rho: invalid value -1.0
  (allowed: --rho > 0)``.
- ``fairseq-hydra-train``: the plugin is imported (``common.user_dir``) at the start of
  ``fairseq_cli.train.main``, whose next call, ``add_defaults``, merges the composed
  ``optimizer`` config into ``XSAMAdamWConfig`` with ``fairseq.dataclass.utils.
  merge_with_parent``. :func:`check_merged` checks the values there, for this dataclass only
  (the wrapper is :func:`fairseq_xsam.fairseq.patches.patch_merge_with_parent`):
  ``fairseq-hydra-train: error: optimizer.rho: invalid value -1.0 (allowed: optimizer.rho >
  0)``, exit status 2. Called from Python outside a hydra job, the same check
  raises :class:`~fairseq_xsam.settings.OptionError` (a ``ValueError``). fairseq-train runs
  ``add_defaults`` too; the values its command line was checked with while parsing are not
  checked again there (:data:`_CHECKED_VALUES`). fairseq's ``build_optimizer`` merges with the
  function it imported, which is not wrapped.

``XSAMAdamW`` and the ``XSAM`` it builds take the checked values as they are. This module imports
nothing of :mod:`.optimizer` (which imports it); the changes to fairseq's parser and
``merge_with_parent`` are made by :mod:`.patches`, with these checks.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from ..settings import CHECKED, DEFAULTS, OptionError, option_name, parse_text, validate
from . import patches

_CLI_PREFIXES = tuple(f"argument {option_name(name, 'cli')}:" for name in CHECKED)


def _text_type(field: str):
    def convert(text):
        return parse_text(field, text)  # text that does not parse is reported by validate()

    convert.__name__ = field
    return convert


def check_while_parsing(parser: argparse.ArgumentParser) -> None:
    """Makes fairseq's ``parser`` check xsam_adamw's options once it has parsed them.

    Each option's text is converted by its rule; after ``parse_known_args`` the whole table is
    checked (cross-option rules too: ``--alpha <= --alpha-max``); the first failure, and
    argparse's own errors about these options (``--sam-variant``'s ``invalid choice``), end
    the program with one line ``PROG: error: MESSAGE`` and exit status 2 (no usage block).
    Idempotent; other options and errors are left to argparse and fairseq. (The parser is
    changed by :func:`fairseq_xsam.fairseq.patches.patch_parser`.)
    """
    patches.patch_parser(parser, {f: _text_type(f) for f in CHECKED}, _namespace_error,
                         _CLI_PREFIXES)


def _namespace_error(namespace: argparse.Namespace) -> Optional[str]:
    """The first rule a parsed ``--optimizer xsam_adamw`` command line breaks, or None."""
    if getattr(namespace, "optimizer", None) != "xsam_adamw":
        return None
    given = {f: getattr(namespace, f) for f in CHECKED if hasattr(namespace, f)}
    try:
        values = validate({**DEFAULTS, **given}, "cli")
    except OptionError as err:
        return str(err)
    _CHECKED_VALUES.append(_checked_key(values))
    return None


#: Value sets already found valid while a command line was parsed: fairseq-train merges the same
#: values into the dataclass afterwards (``add_defaults``), and :func:`check_config` does not
#: check them a second time. Only valid sets are kept, so skipping never lets a bad value by.
_CHECKED_VALUES: list = []


def _checked_key(values) -> tuple:
    return tuple((name, repr(values[name])) for name in CHECKED)


def check_config(cfg) -> dict:
    """Checks an ``optimizer`` config (DictConfig, dict or Namespace) holding xsam_adamw's
    fields; missing ones take the defaults (:data:`fairseq_xsam.settings.DEFAULTS`). Returns the
    checked values."""
    def get(field):
        if isinstance(cfg, argparse.Namespace):
            return getattr(cfg, field)
        return cfg.get(field) if hasattr(cfg, "get") else getattr(cfg, field)

    present = [f for f in CHECKED if (hasattr(cfg, f) if isinstance(cfg, argparse.Namespace)
                                     else f in cfg)]
    given = {f: parse_text(f, get(f)) for f in present}
    if "sam_variant" in given:
        given["sam_variant"] = str(given["sam_variant"])  # a ChoiceEnum member once merged
    values = {**DEFAULTS, **given}
    if _checked_key(values) in _CHECKED_VALUES:
        return values  # fairseq-train's command line, checked while it was parsed
    return validate(values, "hydra")


def _in_hydra_job() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover - fairseq requires hydra
        return False
    return HydraConfig.initialized()


def check_merged(cfg) -> None:
    """:func:`check_config` where fairseq merges an ``optimizer`` config into ``XSAMAdamWConfig``:
    inside a hydra job (fairseq-hydra-train) a bad value ends the program with one line
    ``PROG: error: ...`` and exit status 2; outside one it raises
    :class:`~fairseq_xsam.settings.OptionError`."""
    try:
        check_config(cfg)
    except OptionError as err:
        if not _in_hydra_job():
            raise
        prog = os.path.basename(sys.argv[0]) or "fairseq-hydra-train"
        sys.stderr.write(f"{prog}: error: {err}\n")
        sys.stderr.flush()
        raise SystemExit(2) from None
