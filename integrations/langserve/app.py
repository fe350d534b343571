"""LangServe example: every TTS strategy at ``/tts/<strategy>`` on the embedded models.

Run it (any of these)::

    tts serve --port 8000                       # the installed command
    python integrations/langserve/app.py        # this file
    uvicorn integrations.langserve.app:app      # from the repository root

then call it from Python::

    from langserve import RemoteRunnable

    beam = RemoteRunnable("http://127.0.0.1:8000/tts/beam_search/")
    beam.invoke({"question": "Start with 12. Add 7. Multiply by 2."},
                {"configurable": {"n": 8, "beam_width": 4}})

The app itself lives in :mod:`langchain_tts.serve` so that ``tts serve`` works from an
installed package; this file only shows how to build your own (other models, fewer
strategies, a checkpoint database).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from langchain_tts.serve import create_app  # noqa: E402

# Swap in your own models: create_app(OpenAIPolicy(...), QwenPRM.from_pretrained(...), ...)
app = create_app(
    strategies=["cot", "best_of_n", "weighted_vote", "beam_search", "dvts"],
    budget=16,
    checkpointer=os.environ.get("TTS_CHECKPOINT_DB"),  # a SQLite path: threads resume
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
