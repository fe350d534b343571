"""OpenAIPolicy against a scripted OpenAI-compatible server on 127.0.0.1 (stdlib only)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from langchain_tts import BackendError, ConfigError, create_tts_graph
from langchain_tts.backends.http import server_root
from langchain_tts.backends.text import map_finish_reason
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.types import Trajectory
from langchain_tts.policies.openai import OpenAIPolicy, _distribute
from langchain_tts.prms import HTTPRewardPRM
from langchain_tts.testing import FakeOpenAIServer, FakePRM

Handler = Callable[[str, dict], tuple]


class FakeServer(FakeOpenAIServer):
    """Records every JSON request and answers each via ``handler(path, body)``:
    ``(status, payload)`` or ``(status, payload, headers)``; a ``str`` payload is sent as is."""

    def __init__(self, handler: Handler):
        super().__init__(handler, keep_bodies=True)


@pytest.fixture
def serve():
    servers: list[FakeServer] = []

    def start(handler: Handler) -> FakeServer:
        servers.append(FakeServer(handler))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def depth_of(prompt: str) -> int:
    """Steps already in a ``chat_template="none"`` prompt: "question\\n\\n" + steps."""
    return prompt.count("\n\n") - 1


def vllm_like(
    text: Callable[[int, str, int], tuple[str, str, Any]] | None = None, shuffle: bool = True
) -> Callable[[dict], dict]:
    """A /completions answer in vLLM's shape; ``text(i, prompt, j) -> (text, finish, stop)``."""

    def default(i: int, prompt: str, j: int) -> tuple[str, str, Any]:
        d = depth_of(prompt)
        if d >= 2:
            return "so the answer is \\boxed{7}", "stop", None  # EOS
        return f"s{d}.{j}", "stop", "\n\n"

    fn = text or default

    def answer(body: dict) -> dict:
        prompts, n = body["prompt"], body["n"]
        choices = []
        for i, p in enumerate(prompts):
            for j in range(n):
                t, finish, stop = fn(i, p, j)
                choices.append(
                    {
                        "index": i * n + j,
                        "text": t,
                        "finish_reason": finish,
                        "stop_reason": stop,
                        "logprobs": None,
                    }
                )
        if shuffle:
            random.Random(0).shuffle(choices)
        usage = {
            "prompt_tokens": sum(len(p) for p in prompts),
            "completion_tokens": sum(len(c["text"]) + 1 for c in choices),
        }
        return {"id": "cmpl-1", "object": "text_completion", "choices": choices, "usage": usage}

    return answer


def completions(answer: Callable[[dict], dict]) -> Handler:
    def handler(path: str, body: dict) -> tuple:
        assert path == "/v1/completions", path
        return 200, answer(body)

    return handler


PREFIXES = [
    Trajectory(question="Start with 3. Add 4."),
    Trajectory(question="Start with 12.", steps=["12*2=24"]),
    Trajectory(question="Start with 7.", steps=["7+1=8", "8-2=6"]),
]


def make_policy(server: FakeServer, **kw: Any) -> OpenAIPolicy:
    kw.setdefault("chat_template", "none")
    kw.setdefault("timeout", 5)
    kw.setdefault("backoff", 0.01)
    return OpenAIPolicy(server.url, "tiny", **kw)


# -- the request ---------------------------------------------------------------------------
def test_one_request_per_call_carries_all_prefixes(serve):
    server = serve(completions(vllm_like()))
    policy = make_policy(server, num_parameters=1000)
    params = SamplingParams(temperature=0.8, top_p=0.9, max_step_tokens=17, seed=5)
    result = policy.generate(PREFIXES, n=4, params=params)

    assert len(server.requests) == 1
    body = server.paths("/completions")[0]
    assert body["prompt"] == [
        "Start with 3. Add 4.\n\n",
        "Start with 12.\n\n12*2=24\n\n",
        "Start with 7.\n\n7+1=8\n\n8-2=6\n\n",
    ]
    assert body["n"] == 4 and body["max_tokens"] == 17 and body["seed"] == 5
    assert body["stop"] == ["\n\n"] and body["temperature"] == 0.8 and body["top_p"] == 0.9
    assert body["model"] == "tiny" and body["include_stop_str_in_output"] is False
    assert "add_special_tokens" not in body  # a bare prompt gets BOS from the server

    # Choices were shuffled on the wire: they are placed by index (prompt-major).
    assert [[s.text for s in row] for row in result.steps] == [
        ["s0.0", "s0.1", "s0.2", "s0.3"],
        ["s1.0", "s1.1", "s1.2", "s1.3"],
        ["so the answer is \\boxed{7}"] * 4,
    ]
    assert [s.finish_reason for s in result.steps[0]] == ["step"] * 4
    assert [s.finish_reason for s in result.steps[2]] == ["eos"] * 4
    u = result.usage
    assert u.policy_calls == 1
    assert u.policy_prompt_tokens == sum(len(p) for p in body["prompt"])
    total = sum(len(s.text) + 1 for row in result.steps for s in row)
    assert u.policy_generated_tokens == total
    assert sum(s.tokens for row in result.steps for s in row) == total  # split, total exact
    assert u.policy_flops == 2.0 * 1000 * (u.policy_prompt_tokens + u.policy_generated_tokens)


def test_finish_reasons_and_token_counts(serve):
    table = {
        0: ("a", "stop", "\n\n"),  # stop string -> step
        1: ("b", "stop", None),  # EOS -> eos
        2: ("c", "stop", 128009),  # stop token id -> eos
        3: ("d" * 10, "length", None),  # cap -> length
        4: ("e\n\nextra", "stop", None),  # overshoot: cut client-side -> step
    }

    def answer(body: dict) -> dict:
        choices = [
            {
                "index": i,
                "text": t,
                "finish_reason": f,
                "stop_reason": s,
                "token_ids": [1] * (i + 2),
            }
            for i, (t, f, s) in table.items()
        ]
        return {"choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 20}}

    server = serve(completions(answer))
    prefixes = [Trajectory(question=f"q{i}") for i in range(5)]
    steps = make_policy(server).generate(prefixes, n=1).steps
    assert [row[0].text for row in steps] == ["a", "b", "c", "d" * 10, "e"]
    assert [row[0].finish_reason for row in steps] == ["step", "eos", "eos", "length", "step"]
    assert [row[0].tokens for row in steps] == [2, 3, 4, 5, 6]  # token_ids win when present


def test_server_prefix_cache_hits_are_booked_as_cached_not_computed(serve):
    def answer(body: dict) -> dict:
        choices = [
            {"index": i, "text": "x", "finish_reason": "stop", "stop_reason": "\n\n"}
            for i in range(len(body["prompt"]))
        ]
        usage = {
            "prompt_tokens": 50,
            "completion_tokens": 6,
            "prompt_tokens_details": {"cached_tokens": 32},
        }
        return {"choices": choices, "usage": usage}

    server = serve(completions(answer))
    u = make_policy(server, num_parameters=1000).generate(PREFIXES, n=1).usage
    assert (u.policy_prompt_tokens, u.policy_cached_tokens) == (18, 32)  # 50 read, 32 hits
    assert u.policy_generated_tokens == 6
    assert u.policy_flops == 2.0 * 1000 * (18 + 6)  # cached tokens cost no FLOPs


def test_map_finish_reason_without_vllm_fields():
    assert map_finish_reason("stop", stop_sent=True) == "step"
    assert map_finish_reason("stop", stop_sent=False) == "eos"
    assert map_finish_reason("length", stop_sent=True) == "length"
    assert map_finish_reason("content_filter", stop_sent=True) == "eos"
    assert map_finish_reason("stop", "\n\n", stop_sent=True) == "step"
    assert map_finish_reason("stop", None, stop_sent=True) == "eos"
    assert _distribute(10, [1, 1, 2]) == [3, 2, 5]
    assert sum(_distribute(7, [3, 3, 3])) == 7 and _distribute(0, []) == []
    assert server_root("http://h:8000/v1/") == "http://h:8000"


def test_greedy_asks_once_and_copies(serve):
    server = serve(completions(vllm_like()))
    params = SamplingParams(temperature=0.0, stop_at_step=False)
    result = make_policy(server).generate(PREFIXES[:2], n=3, params=params)
    body = server.paths("/completions")[0]
    assert body["n"] == 1 and "stop" not in body and body["top_p"] == 1.0
    assert [len(r) for r in result.steps] == [3, 3]
    assert len({s.text for s in result.steps[0]}) == 1
    assert result.steps[0][0].finish_reason == "eos"  # "stop" without a stop string sent


def test_malformed_choice_count_is_backend_error(serve):
    server = serve(completions(lambda body: {"choices": [{"index": 0, "text": "x"}]}))
    with pytest.raises(BackendError, match="returned 1 choices"):
        make_policy(server).generate(PREFIXES, n=2)


def _mangled(change: Callable[[dict], None]) -> Handler:
    """A vLLM-like server whose answer ``change`` breaks in place."""
    answer = vllm_like(shuffle=False)

    def mangled(body: dict) -> dict:
        data = answer(body)
        change(data)
        return data

    return completions(mangled)


def _renumber_per_prompt(data: dict) -> None:  # each prompt's samples numbered from 0 again
    n = len(data["choices"]) // len(PREFIXES)
    for k, c in enumerate(data["choices"]):
        c["index"] = k % n


BROKEN_REPLIES = {
    "indices per prompt": (_renumber_per_prompt, r"numbered \[0, 0, 0, 1, 1, 1\]"),
    "a repeated index": (lambda d: d["choices"][1].update(index=0), "numbered"),
    "no text": (lambda d: d["choices"][2].pop("text"), r"choice 2 .* has text None"),
    "null text": (lambda d: d["choices"][0].update(text=None), "has text None"),
    "negative completion tokens": (
        lambda d: d["usage"].update(completion_tokens=-50),
        r"completion_tokens=-50",
    ),
    "negative prompt tokens": (lambda d: d["usage"].update(prompt_tokens=-100), "prompt_tokens"),
    "prompt tokens as text": (lambda d: d["usage"].update(prompt_tokens="lots"), "'lots'"),
    "usage as text": (lambda d: d.update(usage="n/a"), "usage is 'n/a'"),
    "a choice that is a string": (lambda d: d["choices"].__setitem__(0, "x"), "not objects"),
    "more tokens than max_tokens": (
        lambda d: d["choices"][0].update(token_ids=list(range(5000))),
        "ignores max_tokens",
    ),
    "an error object with choices": (
        lambda d: d.update(error={"message": "overloaded"}),
        "error object.*overloaded",
    ),
    "an aborted request": (
        lambda d: d["choices"][1].update(finish_reason="abort"),
        "finish_reason='abort'",
    ),
    "no finish reason": (lambda d: d["choices"][0].update(finish_reason=None), "=None"),
    "a lone surrogate": (lambda d: d["choices"][0].update(text="7 \udcff"), "not valid Unicode"),
}


@pytest.mark.parametrize("case", list(BROKEN_REPLIES))
def test_a_broken_reply_is_a_backend_error_not_a_wrong_sample(serve, case: str):
    """Each of these used to pass into the search: another prefix's sample, a blank step,
    a negative token count that grew the budget with every call, an error taken for data."""
    change, match = BROKEN_REPLIES[case]
    server = serve(_mangled(change))
    with pytest.raises(BackendError, match=match):
        make_policy(server, max_retries=0).generate(PREFIXES, n=2)


def test_zero_completion_tokens_for_written_text_counts_the_text(serve):
    server = serve(_mangled(lambda d: d["usage"].update(completion_tokens=0)))
    out = make_policy(server).generate(PREFIXES, n=2)
    written = sum(s.tokens for row in out.steps for s in row)
    assert written > 0 and out.usage.policy_generated_tokens == written


# -- retries, timeouts, failures -------------------------------------------------------------
def test_retries_on_500_and_429_then_succeeds(serve):
    answer = vllm_like()
    failures = iter([(500, {"error": "boom"}), (429, {"error": "slow down"}, {"Retry-After": "0"})])

    def handler(path: str, body: dict) -> tuple:
        return next(failures, None) or (200, answer(body))

    server = serve(handler)
    result = make_policy(server).generate(PREFIXES[:1], n=2)
    assert len(server.requests) == 3
    assert [s.text for s in result.steps[0]] == ["s0.0", "s0.1"]


def test_persistent_failure_raises_backend_error_with_partial(serve):
    server = serve(lambda path, body: (503, {"error": "model is overloaded"}))
    policy = make_policy(server, max_retries=2)
    t0 = time.perf_counter()
    with pytest.raises(BackendError) as info:
        policy.generate(PREFIXES, n=2)
    assert time.perf_counter() - t0 < 3
    err = info.value
    assert len(server.requests) == 3
    assert server.url + "/completions" in str(err) and "503" in str(err)
    assert "model is overloaded" in str(err)  # body excerpt
    assert err.partial["attempts"] == 3 and err.partial["status"] == 503
    assert len(err.partial["errors"]) == 3


def test_client_error_is_not_retried(serve):
    server = serve(lambda path, body: (400, {"error": "max_tokens too large"}))
    with pytest.raises(BackendError, match="HTTP 400.*max_tokens too large") as info:
        make_policy(server).generate(PREFIXES[:1], n=1)
    assert len(server.requests) == 1 and info.value.partial["attempts"] == 1


def test_slow_server_times_out_instead_of_hanging(serve):
    def handler(path: str, body: dict) -> tuple:
        time.sleep(1.5)
        return 200, {}

    server = serve(handler)
    policy = make_policy(server, timeout=0.2, max_retries=1)
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match="timed out") as info:
        policy.generate(PREFIXES[:1], n=1)
    assert time.perf_counter() - t0 < 1.4
    assert info.value.partial["attempts"] == 2 and info.value.partial["status"] is None


def test_unreachable_server_raises_connection_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policy = OpenAIPolicy(
        f"http://127.0.0.1:{port}/v1", "m", chat_template="none", max_retries=1, backoff=0.01
    )
    with pytest.raises(BackendError, match="connection error"):
        policy.generate(PREFIXES[:1])


# -- prompt templating -----------------------------------------------------------------------
def templating_server(body_of: Callable[[dict], dict]) -> Handler:
    """vLLM's ``/tokenize`` (a template ``<|user|>{question}<|assistant|>``, one character a
    token) and ``/detokenize``, and ``/completions`` answered by ``body_of``."""

    def handler(path: str, body: dict) -> tuple:
        if path == "/tokenize":
            assert body["add_generation_prompt"] is True
            q = body["messages"][-1]["content"]
            return 200, {"tokens": [ord(c) for c in f"<|user|>{q}<|assistant|>"], "count": 1}
        if path == "/detokenize":
            return 200, {"prompt": "".join(chr(t) for t in body["tokens"])}
        return 200, body_of(body)

    return handler


def test_server_chat_template_via_tokenize_endpoints(serve):
    server = serve(templating_server(vllm_like(lambda i, p, j: ("x", "stop", "\n\n"), False)))
    policy = OpenAIPolicy(server.url, "m", system_prompt="be brief", backoff=0.01)
    policy.generate(PREFIXES, n=1)
    policy.generate(PREFIXES, n=1)
    assert policy.templating_requests == 6  # 3 questions x (tokenize + detokenize), cached
    assert len(server.paths("/completions")) == 2
    body = server.paths("/completions")[-1]
    assert body["prompt"][1] == "<|user|>Start with 12.<|assistant|>12*2=24\n\n"
    assert body["add_special_tokens"] is False  # the template already wrote BOS
    assert server.paths("/tokenize")[0]["messages"][0] == {"role": "system", "content": "be brief"}


def test_rendered_templates_are_a_bounded_lru_that_clear_cache_empties(serve, monkeypatch):
    """A server answering strangers renders a new question with every request: the memo
    of rendered conversations used to keep them all, and clear_cache() kept it too."""
    from langchain_tts.backends import http

    monkeypatch.setattr(http, "MAX_RENDERED_CHATS", 2)
    server = serve(templating_server(vllm_like(lambda i, p, j: ("x", "stop", "\n\n"), False)))
    policy = OpenAIPolicy(server.url, "m", backoff=0.01)
    policy.generate(PREFIXES, n=1)  # three questions, rendered concurrently
    assert len(policy._rendered) == 2 and policy.templating_requests == 6
    policy.generate(PREFIXES[2:], n=1)
    policy.generate(PREFIXES[2:], n=1)  # kept since the call before: no new request
    assert policy.templating_requests in (6, 8)
    policy.clear_cache()
    assert not policy._rendered


def test_a_budget_counts_each_prompt_once_on_a_vllm_server(serve):
    """vLLM computes and reports a prompt once however many samples it draws, so a meter
    reserves each prompt's bytes once: n samples of a step fit a budget that n copies of
    the prompt would not."""
    from langchain_tts.ledger import Ledger, MeteredPolicy

    server = serve(completions(vllm_like()))
    policy = make_policy(server, num_parameters=10)
    params = SamplingParams(temperature=0.8, max_step_tokens=16)
    prompts = [
        "Start with 3. Add 4.\n\n",
        "Start with 12.\n\n12*2=24\n\n",
        "Start with 7.\n\n7+1=8\n\n8-2=6\n\n",
    ]
    bound = policy.prompt_tokens_bound(PREFIXES, 8, params)
    assert bound == sum(len(p) + 4 for p in prompts)  # bytes and a BOS allowance, once
    other = make_policy(server, vllm_extensions=False)
    assert other.prompt_tokens_bound(PREFIXES, 8, params) is None  # per sample, by bytes
    budget = bound + 3 * 8 * 16
    ledger = Ledger(max_tokens=budget)
    out = MeteredPolicy(policy, ledger).generate(PREFIXES, 8, params)
    assert not ledger.exhausted and not ledger.cut and ledger.spent.tokens <= budget
    assert all(s.text for row in out.steps for s in row)
    assert MeteredPolicy(other, Ledger()).prompt_bound(PREFIXES, 8) > budget


def test_the_budget_bound_uses_the_server_template_once_rendered(serve):
    server = serve(templating_server(vllm_like(lambda i, p, j: ("x", "stop", "\n\n"), False)))
    policy = OpenAIPolicy(server.url, "m", system_prompt="be brief", backoff=0.01)
    params = SamplingParams(temperature=0.8)
    before = policy.prompt_tokens_bound(PREFIXES[1:2], 4, params)
    assert before == len("Start with 12.") + len("be brief") + 64 + len("12*2=24\n\n")
    policy.generate(PREFIXES[1:2], n=4, params=params)
    after = policy.prompt_tokens_bound(PREFIXES[1:2], 4, params)
    assert after == len("<|user|>Start with 12.<|assistant|>") + 4 + len("12*2=24\n\n")


def test_server_template_missing_endpoint_says_what_to_do(serve):
    server = serve(lambda path, body: (404, {"detail": "Not Found"}))
    with pytest.raises(BackendError, match="chat_template='client'"):
        OpenAIPolicy(server.url, "m", backoff=0.01).generate(PREFIXES[:1])


def test_client_chat_template_and_prompt_template(serve):
    from langchain_tts.models.tokenizer import build_tokenizer

    server = serve(completions(vllm_like(shuffle=False)))
    tok = build_tokenizer()
    policy = make_policy(server, chat_template="client", tokenizer=tok)
    policy.generate(PREFIXES[1:2])
    expected = tok.apply_chat_template(
        [{"role": "user", "content": "Start with 12."}], tokenize=False, add_generation_prompt=True
    )
    assert server.paths("/completions")[0]["prompt"] == [expected + "12*2=24\n\n"]

    templated = make_policy(server, prompt_template="Q: {question}\nA: \\boxed{} later\n")
    templated.generate(PREFIXES[:1])
    assert server.paths("/completions")[1]["prompt"] == [
        "Q: Start with 3. Add 4.\nA: \\boxed{} later\n"
    ]
    with pytest.raises(ConfigError, match="tokenizer"):
        OpenAIPolicy(server.url, "m", chat_template="client")


# -- in a graph --------------------------------------------------------------------------------
def test_beam_search_graph_sends_one_request_per_search_step(serve):
    server = serve(completions(vllm_like()))
    policy = make_policy(server, num_parameters=10)
    prm = FakePRM(lambda t: [0.5 + 0.1 * (int(re.sub(r"\D", "", s) or 0) % 5) for s in t.steps])
    graph = create_tts_graph(policy, prm, "beam_search", {"n": 4, "beam_width": 2, "max_steps": 6})
    out = graph.invoke({"question": "Start with 3. Add 4."})
    assert out["answer"] == "7"
    requests = server.paths("/completions")
    assert len(server.requests) == len(requests)
    assert len(requests) == len(prm.calls) == out["usage"].policy_calls == 3
    assert [len(r["prompt"]) for r in requests] == [1, 2, 2]  # step 0: the root; then 2 beams
    assert [r["n"] for r in requests] == [4, 2, 2]

    # The async path reuses one pooled client for every request of the run.
    out2 = asyncio.run(graph.ainvoke({"question": "Start with 3. Add 4."}))
    assert out2["answer"] == "7" and len(server.paths("/completions")) == 6


# -- deadlines, response size, client mistakes ----------------------------------------------
class RawServer:
    """A loopback HTTP server whose handler writes the raw response itself:
    ``respond(handler)`` gets the ``BaseHTTPRequestHandler`` after the body was read."""

    def __init__(self, respond: Callable[[Any], None]):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    respond(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up: what the tests want

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def raw():
    servers: list[RawServer] = []

    def start(respond: Callable[[Any], None]) -> RawServer:
        servers.append(RawServer(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_timeout_is_a_deadline_for_the_whole_response(raw):
    def trickle(h: Any) -> None:  # a byte every 0.1 s: never a read gap over the timeout
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", "1000")
        h.end_headers()
        for _ in range(1000):
            h.wfile.write(b" ")
            h.wfile.flush()
            time.sleep(0.1)

    server = raw(trickle)
    policy = OpenAIPolicy(server.url, "m", chat_template="none", timeout=0.5, max_retries=1,
                          backoff=0.01)  # fmt: skip
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match="deadline") as info:
        policy.generate(PREFIXES[:1], n=1)
    assert time.perf_counter() - t0 < 2.0  # two attempts of 0.5 s, not 100 s each
    assert info.value.partial["attempts"] == 2


def test_waiting_for_a_free_connection_is_not_part_of_the_deadline(raw):
    """More calls at once than ``max_connections``: the ones waiting their turn have not
    been sent, so the deadline starts when they are. It used to run while they queued in
    httpx's pool, timing out (and retrying) work the server never saw."""
    import asyncio

    seen: list[int] = []

    def slow(h: Any) -> None:  # 0.4 s per answer, well inside the 1 s deadline
        seen.append(1)
        time.sleep(0.4)
        choice = {"index": 0, "text": "s0.0", "finish_reason": "stop", "stop_reason": "\n\n"}
        usage = {"prompt_tokens": 5, "completion_tokens": 2}
        body = json.dumps({"choices": [choice], "usage": usage}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    server = raw(slow)
    policy = OpenAIPolicy(server.url, "m", chat_template="none", timeout=1.0, max_retries=0,
                          max_connections=2)  # fmt: skip

    async def eight() -> list:
        params = SamplingParams(max_step_tokens=8)
        calls = [policy.agenerate(PREFIXES[:1], 1, params) for _ in range(8)]
        return await asyncio.gather(*calls, return_exceptions=True)

    out = asyncio.run(eight())
    assert not [e for e in out if isinstance(e, BaseException)] and len(seen) == 8


def test_a_body_that_does_not_decode_is_retried_then_a_backend_error(raw):
    def broken_gzip(h: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", "9")
        h.end_headers()
        h.wfile.write(b"not gzip!")

    server = raw(broken_gzip)
    policy = OpenAIPolicy(server.url, "m", chat_template="none", max_retries=1, backoff=0.01)
    with pytest.raises(BackendError, match="did not decode") as info:
        policy.generate(PREFIXES[:1], n=1)
    assert info.value.partial["attempts"] == 2


def test_a_response_over_max_response_bytes_is_refused_while_it_streams(raw):
    sent: list[int] = []

    def huge(h: Any) -> None:  # 64 MiB without a length, as chunks
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.end_headers()
        for _ in range(1024):
            h.wfile.write(b" " * 65536)
            sent.append(1)

    server = raw(huge)
    policy = OpenAIPolicy(server.url, "m", chat_template="none", max_response_bytes=2**20,
                          max_retries=3, backoff=0.01)  # fmt: skip
    with pytest.raises(BackendError, match="max_response_bytes=1048576") as info:
        policy.generate(PREFIXES[:1], n=1)
    assert info.value.partial["attempts"] == 1  # the same answer again would not help
    time.sleep(0.2)
    assert len(sent) < 1024  # the client hung up long before the end


def test_a_declared_length_over_the_limit_is_refused_before_reading(serve):
    server = serve(completions(vllm_like()))
    policy = make_policy(server, max_response_bytes=100)
    with pytest.raises(BackendError, match="larger than max_response_bytes=100"):
        policy.generate(PREFIXES[:1], n=2)


def test_client_mistakes_are_typed_errors_before_any_request(serve):
    from langchain_tts.core.errors import InputError

    server = serve(completions(vllm_like()))
    policy = make_policy(server)
    with pytest.raises(InputError, match="not valid Unicode"):
        policy.generate([Trajectory(question="Start with 3.\ud800")], n=1)
    # SamplingParams refuses such seeds itself; the policy checks params built without it
    for seed in (10**30, -1):
        params = SamplingParams.model_construct(seed=seed)
        with pytest.raises(ConfigError, match="seed must be between 0 and"):
            policy.generate(PREFIXES[:1], n=2, params=params)
    assert server.requests == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": None}, "timeout must be"),
        ({"timeout": float("nan")}, "timeout must be"),
        ({"max_retries": 1.5}, "max_retries must be"),
        ({"base_url": "127.0.0.1:8000/v1"}, "http\\(s\\) URL"),
        ({"base_url": "http://127.0.0.1:99999/v1"}, "outside 1..65535"),
    ],
)
def test_a_bad_backend_setting_is_a_config_error_when_built(kwargs, match):
    """Each of these used to pass and fail at the first request (a bare TypeError, an
    ExceptionGroup) or be retried as a connection error."""
    base = {"base_url": "http://127.0.0.1:8000/v1", "model": "m", "chat_template": "none"}
    with pytest.raises(ConfigError, match=match):
        OpenAIPolicy(**{**base, **kwargs})
    with pytest.raises(ConfigError, match=match):
        HTTPRewardPRM(**{**base, "model": "prm", **kwargs})


def test_a_prm_output_error_carries_the_search_progress(serve):
    from langchain_tts.core.errors import PRMOutputError
    from langchain_tts.prms.base import PRMResult, ProcessRewardModel

    class BreaksOnThirdCall(ProcessRewardModel):
        name = "breaks"
        num_parameters = 0

        def __init__(self) -> None:
            self.calls = 0

        async def _ascore(self, trajectories):  # type: ignore[override]
            self.calls += 1
            if self.calls == 3:
                raise PRMOutputError("breaks: 2 scores for 3 steps")
            return PRMResult(scores=[[0.5] * len(t.steps) for t in trajectories])

    server = serve(completions(vllm_like(lambda i, p, j: (f"s{j}", "stop", "\n\n"))))
    graph = create_tts_graph(make_policy(server), BreaksOnThirdCall(), "beam_search",
                             {"n": 4, "beam_width": 2})  # fmt: skip
    with pytest.raises(PRMOutputError) as info:
        graph.invoke({"question": "Start with 3."})
    progress = info.value.progress
    assert progress is not None and progress["step"] == 2 and len(progress["active"]) == 2


@pytest.mark.parametrize("tokenize", [True, False])
def test_a_prompt_near_the_end_of_the_context_gets_its_own_step_cap(tokenize: bool):
    """vLLM refuses a prompt whose tokens plus ``max_tokens`` pass ``--max-model-len``, and
    one such prompt failed the whole batched request. Prompts near the end now go in
    requests of their own with the cap their room allows (counted by ``/tokenize``, or
    bounded by their bytes without it), keep their seeds, and a prompt that fills the
    context writes nothing; the others keep the whole step cap."""
    limit, sent = 4096, []

    def handler(path: str, body: dict) -> Any:
        if path.endswith("/tokenize"):
            if not tokenize:
                return 404, {"error": {"message": "no route"}}
            return 200, {"count": len(body["prompt"]) // 4, "tokens": []}
        if path.endswith("/completions"):
            sent.append((len(body["prompt"]), body["max_tokens"], body.get("seed")))
            if max(len(p) // 4 for p in body["prompt"]) + body["max_tokens"] > limit:
                return 400, {"error": {"message": "maximum context length", "code": 400}}
        return None

    q = "Start with 3. Add 4."
    short = Trajectory(question=q, steps=["3+4=7"])
    near = Trajectory(question=q, steps=["3+4=7 " * 4] * (500 if tokenize else 120))
    full = Trajectory(question=q, steps=["3+4=7 " * 4] * 800)
    with FakeOpenAIServer(handler) as server:
        policy = OpenAIPolicy(server.url, "m", chat_template="none", context_length=limit)
        params = SamplingParams(temperature=1.0, seed=5)
        out = policy.generate([short, near, full, short], 2, params)
    assert [row[0].finish_reason for row in out.steps][2] == "length"
    assert out.steps[2][0].text == "" and all(
        row[0].text for i, row in enumerate(out.steps) if i != 2
    )
    # the requests go out together: in the order of their prompts' seeds
    (n0, cap0, seed0), (n1, cap1, seed1), (n3, cap3, seed3) = sorted(sent, key=lambda r: r[2])
    assert (n0, cap0, seed0) == (1, 2048, 5) and (n3, cap3, seed3) == (1, 2048, 5 + 3 * 2)
    assert n1 == 1 and 0 < cap1 < 2048 and seed1 == 5 + 1 * 2
    assert out.usage.policy_calls == 3  # three requests, each counted
