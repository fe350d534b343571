"""Benchmarks of langchain-tts (``make bench``); see docs/performance.md."""
