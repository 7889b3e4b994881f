"""``RUN/run.json``: a run's settings written once as structured data, beside ``command.txt``.

The recipes write it when they start (or resume) a run, from the table of settings that also
builds the fairseq command; the report and the recipes read a run's data folder, ρ, epochs and
ascent steps from it, never from the command string. Keys:

- ``format``: 1
- ``command``: the fairseq-train command as a list of words (what ``command.txt`` holds, joined)
- ``data``, ``save_dir``: the data folder and checkpoint folder of the command
- ``settings``: ``{option: value}`` of the recipe's table under fairseq's option names
  (``arch``, ``optimizer``, ``rho``, ``probe_rho``, ``max_epoch``, ``ascent_steps``, ...;
  a bare flag is ``true``)
- ``extra``: the arguments given after ``--`` (to fairseq-train unchanged, last)

Runs committed before run.json existed get theirs once from their ``command.txt``
(``xsam-run-record RUN...``, :func:`from_command`): the one place
a command string is read back, for that migration only.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import List, Optional, Sequence

NAME = "run.json"
FORMAT = 1


def _number(text: str):
    """int, then float, else the text (the values of a migrated command line)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _value(text: str):
    """A migrated flag's value: a comma-separated list of numbers as the recipes write lists
    (``--lr 0.002``; one number is that number), else a number or the text."""
    if "," in text and text[:1] not in "([{'\"":
        return [_number(x) for x in text.split(",")]
    return _number(text)


def settings_of(settings, name_flags: dict) -> dict:
    """``{option: value}`` of a recipe's table (``(group, key, value)`` triples): a group's
    ``_name`` under its flag's name (``model`` -> ``arch``), options left out of the command
    (False, None) left out here too."""
    out = {}
    for group, key, value in settings:
        if value is False or value is None:
            continue
        name = name_flags[group][2:] if key == "_name" else key
        if isinstance(value, list) and len(value) == 1:  # the command's "--lr 0.002"
            value = value[0]
        out[name.replace("-", "_")] = value
    return out


def record(command: Sequence[str], data, save_dir, settings: dict,
           extra: Sequence[str] = ()) -> dict:
    return {"format": FORMAT, "command": [str(c) for c in command], "data": str(data),
            "save_dir": str(save_dir), "settings": settings, "extra": list(extra)}


def write(run: Path, rec: dict) -> Path:
    """Writes ``RUN/run.json`` unless the run has one (a run's record is written once)."""
    path = Path(run) / NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=2) + "\n", encoding="utf-8")
    return path


def read(run: Path) -> Optional[dict]:
    path = Path(run) / NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def setting(run: Path, name: str, default=None):
    """One setting of the run's record (``rho``, ``max_epoch``, ...); ``default`` without one."""
    rec = read(run)
    return default if rec is None else rec["settings"].get(name, default)


def from_command(words: List[str]) -> dict:
    """The record of a fairseq-train command written by the recipes (``PYTHON -m
    fairseq_cli.train DATA --user-dir DIR FLAGS... --save-dir DIR EXTRA...``)."""
    if words[1:3] != ["-m", "fairseq_cli.train"]:
        raise ValueError(f"not a recipe's fairseq-train command: {' '.join(words[:3])}")
    data, rest = words[3], words[4:]
    save = rest.index("--save-dir")
    flags, extra = rest[:save], rest[save + 2:]
    settings, i = {}, 0
    while i < len(flags):
        name = flags[i][2:].replace("-", "_")
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            settings[name] = _value(flags[i + 1])
            i += 2
        else:
            settings[name] = True
            i += 1
    settings.pop("user_dir", None)
    return record(words, data, rest[save + 1], settings, extra)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Writes run.json of runs committed before it "
                                "existed, from their command.txt (once: a run.json is kept)")
    p.add_argument("runs", nargs="+", type=Path, help="run folders holding command.txt")
    args = p.parse_args(argv)
    for run in args.runs:
        if (run / NAME).exists():
            continue
        words = shlex.split((run / "command.txt").read_text(encoding="utf-8"))
        print(f"run_record: {write(run, from_command(words))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
