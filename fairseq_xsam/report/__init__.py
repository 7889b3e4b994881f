"""Reporting over recipe runs: the one train.log reader (:mod:`.logs`), a run folder and its
grouping (:mod:`.runs`), sacreBLEU statistics (:mod:`.stats`), plots (:mod:`.plots`), report.md
(:mod:`.tables`) and the ``xsam-report`` command (:mod:`.cli`)."""

from .cli import main
from .logs import edge_pinned, log_timing, parse_train_log
from .plots import bleu_by_test_set, plots
from .runs import (
                   ORDER,
                   ReportError,
                   fmt,
                   fmt_n,
                   group,
                   label_and_seed,
                   load_run,
                   mean_std,
                   summarise,
                   test_set_scores,
                   test_sets,
)
from .stats import pairs, read_hypotheses, read_lines, read_references, rescore, significance
from .tables import CostRow, cost_rows, report, report_multi, sweep_rows

__all__ = ["CostRow", "ORDER", "ReportError", "bleu_by_test_set", "cost_rows", "edge_pinned", "fmt",
           "fmt_n", "group", "label_and_seed", "load_run", "log_timing", "main", "mean_std",
           "pairs", "parse_train_log", "plots", "read_hypotheses", "read_lines",
           "read_references", "report", "report_multi", "rescore", "significance", "summarise",
           "sweep_rows", "test_set_scores", "test_sets"]
