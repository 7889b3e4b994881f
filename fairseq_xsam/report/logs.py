"""The one reader of fairseq's train.log (simple or hydra format): the end-of-epoch training
fields, validation metrics per epoch, XSAM's alpha searches (and whether each was pinned at the
grid's edge), the cost (updates, wall-clock of every process that wrote the log, updates/s) and
the last update count. The recipes (timing.json), the study driver, the report and the GPU check
read logs through these functions only."""

from __future__ import annotations

import re
import statistics
import time
from typing import Dict, List, Optional

TRAIN_EPOCH_RE = re.compile(r"\| train \| epoch (\d+) \| (.*)$")


def last_train_stats(log_text: str) -> Dict[str, float]:
    """The fields of the last end-of-epoch 'train' line of a fairseq log (num_updates, ...;
    its train_wall is that epoch's training seconds only: see :func:`training_seconds`)."""
    stats: Dict[str, float] = {}
    for line in log_text.splitlines():
        m = TRAIN_EPOCH_RE.search(line)
        if m:
            stats = {"epoch": float(m.group(1)), **log_fields(m.group(2))}
    return stats


def epoch_fields(log_text: str) -> Dict[int, Dict[str, float]]:
    """The numeric fields of every epoch's end-of-epoch 'train' line. An epoch logged twice (a
    run killed after the line, before its checkpoint, then resumed) counts with its last line;
    the study's runs checkpoint at epoch ends, so a resumed epoch is trained again from its
    start and that line covers all of it."""
    per_epoch: Dict[int, Dict[str, float]] = {}
    for line in log_text.splitlines():
        m = TRAIN_EPOCH_RE.search(line)
        if m:
            per_epoch[int(m.group(1))] = log_fields(m.group(2))
    return per_epoch


def training_seconds(log_text: str) -> Optional[float]:
    """Seconds spent in training steps over the whole run: the sum of each epoch's train_wall
    (fairseq resets that meter every epoch)."""
    walls = [f["train_wall"] for f in epoch_fields(log_text).values() if "train_wall" in f]
    return sum(walls) if walls else None


def epoch_rates(log_text: str) -> Dict[str, float]:
    """Updates per second of training of every epoch: its updates over its train_wall."""
    rates, before = {}, 0.0
    for epoch, f in sorted(epoch_fields(log_text).items()):
        updates, wall = f.get("num_updates"), f.get("train_wall")
        if updates is not None and wall and updates > before:
            rates[str(epoch)] = (updates - before) / wall
        before = updates if updates is not None else before
    return rates


def median_rate(log_text: str) -> Optional[float]:
    """The median over epochs of :func:`epoch_rates`: the training speed, robust to an epoch in
    which the machine stalled (a paused or overloaded machine inflates that epoch's train_wall)."""
    rates = list(epoch_rates(log_text).values())
    return statistics.median(rates) if rates else None


def log_timing(log_text: str) -> Dict[str, Optional[float]]:
    """A run's cost read from its train.log alone (the same whenever and by whom it was read):
    updates, wall-clock of every fairseq process that wrote the log (:func:`session_walls`),
    training seconds (:func:`training_seconds`), updates/s (:func:`median_rate`) and the day of
    its last line (``day``, YYYY-MM-DD: every session runs on a machine of its own)."""
    stats, walls = last_train_stats(log_text), session_walls(log_text)
    last = next((m.group(1) for m in map(STAMP_RE.match, reversed(log_text.splitlines())) if m),
                None)
    return {"updates": int(stats["num_updates"]) if "num_updates" in stats else None,
            "wall_s": sum(walls) if walls else None, "processes": len(walls) or None,
            "train_wall_s": training_seconds(log_text), "updates_per_s": median_rate(log_text),
            "day": last[:10] if last else None}


#: the first line of every fairseq-train process: its configuration
SESSION_START_RE = re.compile(r"\| fairseq_cli\.train \| \{'_name'")
STAMP_RE = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) \|")


def session_walls(log_text: str) -> List[float]:
    """Seconds from the first to the last timestamped line of every fairseq-train process that
    wrote to this log (a new process starts with its configuration line), killed ones too."""
    walls: List[float] = []
    first = last = None
    for line in log_text.splitlines():
        m = STAMP_RE.match(line)
        if not m:
            continue
        stamp = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
        if SESSION_START_RE.search(line) and first is not None:
            walls.append(last - first)
            first = None
        if first is None:
            first = stamp
        last = stamp
    if first is not None:
        walls.append(last - first)
    return walls


def log_fields(text: str) -> Dict[str, float]:
    """The numeric 'key value' fields of a fairseq log message 'a 1 | b 2 | ...'."""
    out = {}
    for part in text.split(" | "):
        key, _, value = part.strip().partition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out


VALID_RE = re.compile(r"epoch (\d+) \| valid on '([^']+)' subset \| (.*)$")
ALPHA_RE = re.compile(r"XSAM alpha search at update (\d+): alpha=([-+0-9.eE]+)"
                      r"(?: \(probe losses ([^)]*)\))?(.*)$")
#: a search's log line ends in this note when α* is on the grid's edge (decided at full
#: precision), and the log has the metric xsam_alpha_at_edge; older logs only have the losses
EDGE_NOTE = " [at the grid's edge"
UPDATES_RE = re.compile(r"num_updates[ =](\d+)")



def parse_train_log(text: str) -> dict:
    """Validation metrics per epoch (subset 'valid'), alpha searches, whether each search was
    pinned at the edge of its grid (None without the probe losses) and the last update count."""
    valid: Dict[int, Dict[str, float]] = {}
    searches: Dict[int, tuple] = {}  # by update: a search repeated after a resume counts once
    updates = None
    noted = "xsam_alpha_at_edge" in text  # the edge is in the log lines themselves
    for line in text.splitlines():
        m = VALID_RE.search(line)
        if m and m.group(2) == "valid":
            valid[int(m.group(1))] = log_fields(m.group(3))
        m = ALPHA_RE.search(line)
        if m:
            if noted:
                pinned = EDGE_NOTE in m.group(4)
            else:  # recomputed from the printed (rounded) losses
                pinned = (edge_pinned([float(x) for x in m.group(3).split()])
                          if m.group(3) else None)
            searches[int(m.group(1))] = (float(m.group(2)), pinned)
        for m in UPDATES_RE.finditer(line):
            updates = int(m.group(1))
    alpha = [(u, a) for u, (a, _) in sorted(searches.items())]
    pinned = [p for _, (_, p) in sorted(searches.items())]
    return {"valid": valid, "alpha": alpha, "alpha_pinned": pinned, "updates": updates}


def edge_pinned(probes: List[float]) -> bool:
    """Whether the largest finite probe loss is the last probe (probes are in alpha order): the
    search would have gone further than its grid allows. Ties go to the first maximum."""
    finite = [(x, i) for i, x in enumerate(probes) if x == x and abs(x) != float("inf")]
    if not finite:
        return False
    best = max(x for x, _ in finite)
    return next(i for x, i in finite if x == best) == len(probes) - 1


def parse_hf_history(history: List[dict]) -> dict:
    """The Hugging Face Trainer's ``state.log_history`` (``xsam-hf-multi30k``'s
    log_history.json) as :func:`parse_train_log` and :func:`log_timing` give a fairseq log:
    validation loss per epoch (``eval_loss``, in nats: fairseq logs base 2), the last update
    and the cost. The α searches come from the run's train.log, in the shared line format."""
    valid = {round(h["epoch"]): {"loss": h["eval_loss"]} for h in history if "eval_loss" in h}
    steps = [h["step"] for h in history if "step" in h]
    runtimes = [h["train_runtime"] for h in history if "train_runtime" in h]  # one per train()
    updates = max(steps) if steps else None
    timing = None
    if runtimes and updates:
        wall = sum(runtimes)
        timing = {"updates": updates, "wall_s": wall, "processes": len(runtimes),
                  "train_wall_s": wall, "updates_per_s": updates / wall, "day": None}
    return {"valid": valid, "updates": updates, "timing": timing}

