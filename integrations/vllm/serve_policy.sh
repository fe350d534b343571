#!/usr/bin/env bash
# The policy server: OpenAI-compatible /v1/completions for OpenAIPolicy.
#
#   POLICY_MODEL=Qwen/Qwen2.5-Math-1.5B-Instruct POLICY_GPU_FRACTION=0.45 ./serve_policy.sh
#
# Prefix caching is what makes step-by-step search cheap: every search step re-sends the
# question and all previous steps, which the cache turns into hits.
set -euo pipefail

MODEL="${POLICY_MODEL:-Qwen/Qwen2.5-Math-1.5B-Instruct}"
PORT="${POLICY_PORT:-8000}"
FRACTION="${POLICY_GPU_FRACTION:-0.45}"
MAX_LEN="${POLICY_MAX_MODEL_LEN:-4096}"

exec vllm serve "$MODEL" \
  --port "$PORT" \
  --served-model-name policy \
  --gpu-memory-utilization "$FRACTION" \
  --max-model-len "$MAX_LEN" \
  --enable-prefix-caching \
  --enable-prompt-tokens-details \
  --seed 0 \
  "$@"
