"""Backend plumbing shared by policies and PRMs: the sync bridge and worker pool, loading and
batching local torch / transformers models, the HTTP client of OpenAI-compatible servers,
sampling, and the text conventions of prompts and completions.

Layering: this package imports only :mod:`langchain_tts.core`; policies and PRMs import it.
Nothing is imported here, so ``import langchain_tts.backends`` loads no torch or httpx.
"""
