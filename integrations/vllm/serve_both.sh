#!/usr/bin/env bash
# Policy + PRM on ONE GPU: two vLLM servers splitting its memory.
#
#   ./serve_both.sh                      # Qwen2.5-Math-1.5B-Instruct + Qwen2.5-Math-PRM-7B
#   POLICY_GPU_FRACTION=0.30 PRM_GPU_FRACTION=0.55 ./serve_both.sh
#
# --gpu-memory-utilization is a fraction of the WHOLE GPU for each server, so the two must
# sum to <= ~0.9. The servers start one after the other: vLLM profiles free memory at
# start-up, and two profiling at once can both claim the same memory. On an 80 GB GPU the
# 7B PRM (15 GB of bf16 weights) and the 1.5B policy (3 GB) fit well at 0.45 / 0.45; on a
# 24 GB GPU use a smaller PRM (e.g. Skywork-o1-Open-PRM-Qwen-2.5-1.5B in-process with
# SkyworkPRM) or run the PRM with transformers (QwenPRM) on a second device.
# Logs: ./logs/policy.log and ./logs/prm.log. Ctrl-C stops both.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/common.sh"
mkdir -p logs

export POLICY_GPU_FRACTION="${POLICY_GPU_FRACTION:-0.45}"
export PRM_GPU_FRACTION="${PRM_GPU_FRACTION:-0.45}"
POLICY_PORT="${POLICY_PORT:-8000}"
PRM_PORT="${PRM_PORT:-8001}"
export POLICY_PORT PRM_PORT

"$HERE/serve_policy.sh" >logs/policy.log 2>&1 &
POLICY_PID=$!
trap 'kill "$POLICY_PID" ${PRM_PID:-} 2>/dev/null || true' EXIT INT TERM
wait_healthy "$POLICY_PORT" "$POLICY_PID"

"$HERE/serve_prm.sh" >logs/prm.log 2>&1 &
PRM_PID=$!
wait_healthy "$PRM_PORT" "$PRM_PID"

cat <<MSG
Ready. In Python:
  from langchain_tts import create_tts_graph
  from langchain_tts.policies import OpenAIPolicy
  from langchain_tts.prms import HTTPRewardPRM
  policy = OpenAIPolicy("http://127.0.0.1:${POLICY_PORT}/v1", "policy")
  prm = HTTPRewardPRM("http://127.0.0.1:${PRM_PORT}", "prm")
  graph = create_tts_graph(policy, prm, "beam_search", {"n": 16, "beam_width": 4})
MSG
wait
