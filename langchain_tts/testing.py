"""Scripted fakes of a policy and a PRM, for unit tests and for measuring orchestration.

``FakePolicy(fn)`` answers every prefix with ``fn(prefix, sample_index)`` (a string or a
``Step``); ``FakePRM(fn)`` scores a trajectory with ``fn(trajectory)``. Both record their
calls, so tests can assert batching (one call per search step). ``FakeOpenAIServer`` is a
scripted vLLM-like HTTP server on 127.0.0.1 for the HTTP backends (tests and benchmarks).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from langchain_tts.core.config import SamplingParams
from langchain_tts.core.types import Step, Trajectory, Usage
from langchain_tts.policies.base import PolicyResult, StepPolicy
from langchain_tts.prms.base import PRMResult, ProcessRewardModel

StepFn = Callable[[Trajectory, int], "str | Step"]


class FakePolicy(StepPolicy):
    """A policy whose next step is computed by a Python function.

    With ``honour_step_cap=True`` it behaves like a real backend under ``max_step_tokens``:
    a step longer than the cap is cut to it with ``finish_reason="length"`` (budget tests).
    """

    def __init__(
        self,
        fn: StepFn,
        *,
        num_parameters: int = 1000,
        name: str = "fake-policy",
        honour_step_cap: bool = False,
    ):
        self.fn = fn
        self.honour_step_cap = honour_step_cap
        self.num_parameters = num_parameters
        self.name = name
        self.calls: list[tuple[int, int, SamplingParams]] = []  # (prefixes, n, params)

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        self.calls.append((len(prefixes), n, params))
        out: list[list[Step]] = []
        gen = prompt = 0
        for p in prefixes:
            row = []
            for i in range(n):
                step = (
                    self._next_step(p, i) if params.stop_at_step else self._rest_of_solution(p, i)
                )
                cap = params.max_step_tokens
                if self.honour_step_cap and step.tokens > cap:
                    step = Step(text=step.text[: 4 * cap], tokens=cap, finish_reason="length")
                row.append(step)
                gen += step.tokens
            out.append(row)
            prompt += sum(len(s) // 4 for s in p.steps) + len(p.question) // 4
        usage = Usage(
            policy_calls=1,
            policy_prompt_tokens=prompt,
            policy_generated_tokens=gen,
            policy_flops=2.0 * self.num_parameters * (prompt + gen),
        )
        return PolicyResult(steps=out, usage=usage)

    def _next_step(self, prefix: Trajectory, i: int) -> Step:
        s = self.fn(prefix, i)
        return s if isinstance(s, Step) else Step(text=s, tokens=max(1, len(s) // 4))

    def _rest_of_solution(self, prefix: Trajectory, i: int) -> Step:
        """The rest of a solution (``stop_at_step=False``), as a real backend writes it: the
        function's steps until one boxes an answer, ends otherwise, or 16 steps are written."""
        steps: list[Step] = []
        t = prefix
        for _ in range(16):
            step = self._next_step(t, i)
            steps.append(step)
            if "\\boxed" in step.text or step.finish_reason != "step":
                break
            t = t.extend(step)
        text = "\n\n".join(s.text for s in steps)
        reason = steps[-1].finish_reason if steps[-1].finish_reason != "step" else "eos"
        return Step(text=text, tokens=sum(s.tokens for s in steps), finish_reason=reason)


class FakePRM(ProcessRewardModel):
    """A PRM whose per-step scores are computed by a Python function."""

    def __init__(
        self,
        fn: Callable[[Trajectory], list[float]],
        *,
        num_parameters: int = 1000,
        name: str = "fake-prm",
    ):
        self.fn = fn
        self.num_parameters = num_parameters
        self.name = name
        self.calls: list[int] = []  # trajectories per call

    async def _ascore(self, trajectories: Sequence[Trajectory]) -> PRMResult:
        self.calls.append(len(trajectories))
        scores = [list(self.fn(t)) for t in trajectories]
        tokens = sum(len(t.question) // 4 + sum(len(s) // 4 for s in t.steps) for t in trajectories)
        usage = Usage(prm_calls=1, prm_tokens=tokens, prm_flops=2.0 * self.num_parameters * tokens)
        return PRMResult(scores=scores, usage=usage)


# -- a scripted OpenAI-compatible (vLLM-like) server on 127.0.0.1 ------------------------------
Handler = Callable[[str, dict], "tuple | None"]


class FakeOpenAIServer:
    """A threaded stdlib HTTP server that speaks enough of vLLM's API for the HTTP backends.

    ``/v1/completions`` answers every prompt x ``n`` in vLLM's shape (choices numbered
    prompt-major, ``stop_reason`` set); a prompt with ``finish_depth`` steps gets a boxed
    answer and EOS. ``/pooling`` answers STEP pooling: one ``[1 - p, p]`` row per ``<extra_0>``
    tag (:class:`~langchain_tts.prms.http.HTTPRewardPRM`, ``format="qwen"``). Use the
    backends with ``chat_template="none"``. Every request is counted per path
    (``counts``); bodies are kept only with ``keep_bodies=True``.

    ``handler(path, body)`` can answer first: ``(status, payload)`` or ``(status, payload,
    headers)`` (a ``str`` payload is sent as is), or ``None`` for the default answer.
    ``delay`` seconds are slept before every answer (a slow server). Use as a context
    manager, or call :meth:`close`.
    """

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        finish_depth: int = 3,
        answer: str = "7",
        delay: float = 0.0,
        keep_bodies: bool = False,
    ):
        self.handler = handler
        self.finish_depth = finish_depth
        self.answer = answer
        self.delay = delay
        self.keep_bodies = keep_bodies
        self.counts: dict[str, int] = {}
        self.requests: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        outer = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers and body wait on delayed ACKs (40 ms)

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                size = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(size) or b"{}")
                except ValueError:
                    body = {}
                status, payload, headers = outer._answer(self.path, body)
                data = (
                    payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                )
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout tests)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    # -- addresses ------------------------------------------------------------------------------
    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def url(self) -> str:
        """The OpenAI-style base URL (``.../v1``) for ``OpenAIPolicy`` / ``HTTPRewardPRM``."""
        return self.root + "/v1"

    def paths(self, suffix: str) -> list[dict]:
        """Bodies of the kept requests (``keep_bodies=True``) whose path ends with ``suffix``."""
        with self._lock:
            return [body for path, body in self.requests if path.endswith(suffix)]

    def count(self, suffix: str) -> int:
        """Requests so far whose path ends with ``suffix``."""
        with self._lock:
            return sum(n for path, n in self.counts.items() if path.endswith(suffix))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- answers --------------------------------------------------------------------------------
    def _answer(self, path: str, body: dict) -> tuple[int, object, dict]:
        with self._lock:
            self.counts[path] = self.counts.get(path, 0) + 1
            if self.keep_bodies:
                self.requests.append((path, body))
        if self.delay:
            time.sleep(self.delay)
        if self.handler is not None:
            out = self.handler(path, body)
            if out is not None:
                status, payload, *rest = out
                return status, payload, (rest[0] if rest else {})
        try:
            if path.endswith("/completions"):
                return 200, self.completions(body), {}
            if path.endswith("/pooling"):
                return 200, self.pooling(body), {}
        except (KeyError, TypeError, ValueError) as e:
            return 400, {"error": {"message": f"bad request: {e}"}}, {}
        return 404, {"error": {"message": f"no route {path}"}}, {}

    def completions(self, body: dict) -> dict:
        """vLLM's ``/v1/completions`` answer: step ``d.j`` at depth d, sample j; then EOS."""
        prompts, n = body["prompt"], int(body.get("n", 1))
        prompts = [prompts] if isinstance(prompts, str) else prompts
        choices = []
        for i, prompt in enumerate(prompts):
            depth = max(prompt.count("\n\n") - 1, 0)  # "question\n\n" + one "step\n\n" each
            for j in range(n):
                if depth + 1 >= self.finish_depth:
                    text, stop = f"so the answer is \\boxed{{{self.answer}}}", None
                else:
                    text, stop = f"step {depth}.{j}: {depth + j} + 1 = {depth + j + 1}", "\n\n"
                choices.append(
                    {"index": i * n + j, "text": text, "finish_reason": "stop", "stop_reason": stop}
                )
        usage = {
            "prompt_tokens": sum(-(-len(p) // 4) for p in prompts),
            "completion_tokens": sum(-(-len(c["text"]) // 4) for c in choices),
        }
        return {"id": "cmpl-fake", "object": "text_completion", "choices": choices, "usage": usage}

    def pooling(self, body: dict) -> dict:
        """vLLM's STEP pooling answer: a ``[1 - p, p]`` row per ``<extra_0>`` of each input."""
        inputs = body["input"]
        data = []
        for i, text in enumerate([inputs] if isinstance(inputs, str) else inputs):
            rows = []
            for k, part in enumerate(text.split("<extra_0>")[:-1]):
                p = 0.5 + 0.4 * ((len(part) + k) % 5) / 5  # deterministic, in [0.5, 0.82]
                rows.append([1.0 - p, p])
            data.append({"index": i, "object": "pooling", "data": rows})
        tokens = sum(-(-len(t) // 4) for t in inputs)
        return {"object": "list", "data": data, "usage": {"prompt_tokens": tokens}}
