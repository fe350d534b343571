"""Research tooling for the embedded models: training (``python -m research.train``), the
model-card sweep, the router evaluation and diagnostics. It depends on ``langchain_tts``;
the package never imports it, and it is not part of the wheel."""
