"""The log line of an α search, one format for every entry point (fairseq's glue, the Hugging Face
Trainer's): ``xsam-report`` reads it back (:data:`fairseq_xsam.report.logs.ALPHA_RE`)."""

from __future__ import annotations

from . import core

#: Appended to a search's log line when α* is its last probe (a report parser keys on the prefix
#: " [at the grid's edge"); the rest says what bounded the search (core.edge_of).
EDGE_NOTES = {core.EDGE_GRID: " [at the grid's edge]",
              core.EDGE_PROBES: " [at the grid's edge: --alpha-expand-probes used up]",
              core.EDGE_OPPOSITE: " [at the grid's edge: alpha*phi reached pi]"}


def search_line(update: int, info: core.UpdateInfo) -> str:
    """'XSAM alpha search at update N: alpha=A (probe losses ...)[edge note]'."""
    return (f"XSAM alpha search at update {update}: alpha={info.alpha:.2f} (probe losses "
            + " ".join(f"{x:.4f}" for x in info.probe_losses.tolist()) + ")"
            + EDGE_NOTES.get(info.edge, ""))
