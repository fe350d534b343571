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

from langchain_tts.core.lazy import lazy_getattr

_EXPORTS = {
    "Problem": "datasets",
    "load_dataset": "datasets",
    "load_jsonl": "datasets",
    "answers_match": "grading",
    "grade": "grading",
    "budget_config": "runner",
    "calibration_records": "runner",
    "load_records": "runner",
    "markdown_table": "runner",
    "read_records": "runner",
    "run_eval": "runner",
    "summarize": "runner",
    "analyze": "report",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
