"""The router's hard compute caps: moved to :mod:`langchain_tts.ledger` (shared with every
strategy's ``max_flops`` / ``max_tokens``); re-exported here so existing imports keep working.
"""

from langchain_tts.ledger import (
    PRM_OVERHEAD_TOKENS,
    PRM_STEP_OVERHEAD_TOKENS,
    PROMPT_OVERHEAD_TOKENS,
    Ledger,
    MeteredPolicy,
    MeteredPRM,
    meter,
)

__all__ = [
    "PRM_OVERHEAD_TOKENS",
    "PRM_STEP_OVERHEAD_TOKENS",
    "PROMPT_OVERHEAD_TOKENS",
    "Ledger",
    "MeteredPRM",
    "MeteredPolicy",
    "meter",
]
