"""Evaluation: datasets (synthetic, MATH-500, AIME-2024), grading, resumable sweeps, reports.

* :mod:`~langchain_tts.eval.datasets`: ``load_dataset("math500" | "aime24" | "synthetic")``;
* :mod:`~langchain_tts.eval.grading`: ``answers_match`` / ``grade`` (math-verify);
* :mod:`~langchain_tts.eval.runner`: ``run_eval`` (one JSONL record per problem, resumable),
  ``summarize``, ``load_records``, ``calibration_records`` (for ``routing.calibrate``);
* :mod:`~langchain_tts.eval.report`: ``write_report`` (accuracy per bin, scaling-law fits,
  crossovers, plots). See ``docs/evaluation.md``.

Names are imported lazily, so ``import langchain_tts.eval`` stays cheap.
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
        "report": ("analyze", "write_report"),
    },
)
