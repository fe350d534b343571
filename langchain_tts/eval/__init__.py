"""Evaluation: datasets (synthetic, MATH-500, AIME-2024), grading, resumable sweeps, reports.

Names are imported lazily, so ``import langchain_tts.eval`` stays cheap. See
``docs/evaluation.md``.
"""

from __future__ import annotations

from langchain_tts.core.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "datasets": ("Problem", "load_dataset", "load_jsonl"),
        "grading": ("answers_match", "grade"),
        "runner": (
            "budget_config",
            "calibration_records",
            "load_records",
            "markdown_table",
            "read_records",
            "run_eval",
            "summarize",
        ),
        "report": (
            "analyze",
            "plot_accuracy_by_difficulty",
            "plot_accuracy_vs_flops",
            "write_report",
        ),
    },
)
