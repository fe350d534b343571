"""Ready graphs for `langgraph dev` / LangGraph Platform (see langgraph.json).

Each graph runs on the embedded default models (CPU, offline). Knobs are overridable per run
through ``config["configurable"]`` (e.g. ``{"n": 64, "beam_width": 4}``).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from langchain_tts import create_tts_graph  # noqa: E402
from langchain_tts.models import load_default  # noqa: E402

_policy, _prm = load_default()

beam_search = create_tts_graph(_policy, _prm, "beam_search", {"n": 16, "beam_width": 4})
best_of_n = create_tts_graph(_policy, _prm, "best_of_n", {"n": 16})
weighted_vote = create_tts_graph(_policy, _prm, "weighted_vote", {"n": 16})
majority_vote = create_tts_graph(_policy, None, "majority_vote", {"n": 16})
cot = create_tts_graph(_policy, None, "cot")
