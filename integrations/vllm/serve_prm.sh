#!/usr/bin/env bash
# The PRM server: vLLM's pooling endpoint (POST /pooling) for HTTPRewardPRM.
#
#   PRM_MODEL=Qwen/Qwen2.5-Math-PRM-7B PRM_GPU_FRACTION=0.45 ./serve_prm.sh
#
# Qwen2.5-Math-PRM: vLLM's Qwen2ForProcessRewardModel pools the 2-class probabilities at
# every <extra_0> (STEP pooling) by default, so no pooler config is needed.
# Math-Shepherd (a causal LM read at "ки"): pass the STEP pooler config, e.g.
#   PRM_MODEL=peiyi9979/math-shepherd-mistral-7b-prm \
#   PRM_POOLER='{"pooling_type": "STEP", "step_tag_id": 12902, "returned_token_ids": [648, 387]}' \
#   ./serve_prm.sh
#
# The runner flag changed across vLLM versions: 0.10+ uses `--runner pooling` (the default
# here), 0.6-0.9 used `--task reward`; the pooler flag was `--override-pooler-config` before
# it became `--pooler-config`. Override with PRM_RUNNER_FLAGS / PRM_POOLER_FLAG.
set -euo pipefail

MODEL="${PRM_MODEL:-Qwen/Qwen2.5-Math-PRM-7B}"
PORT="${PRM_PORT:-8001}"
FRACTION="${PRM_GPU_FRACTION:-0.45}"
MAX_LEN="${PRM_MAX_MODEL_LEN:-4096}"
read -r -a RUNNER <<< "${PRM_RUNNER_FLAGS:---runner pooling}"
POOLER_FLAG="${PRM_POOLER_FLAG:---pooler-config}"

ARGS=(--port "$PORT" --served-model-name prm --gpu-memory-utilization "$FRACTION"
      --max-model-len "$MAX_LEN" --trust-remote-code "${RUNNER[@]}")
if [[ -n "${PRM_POOLER:-}" ]]; then
  ARGS+=("$POOLER_FLAG" "$PRM_POOLER")
fi

exec vllm serve "$MODEL" "${ARGS[@]}" "$@"
