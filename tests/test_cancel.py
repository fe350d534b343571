"""Cancellation: a cancelled ``ainvoke``, a client that hangs up and SIGTERM stop the work.

The search stops within one step (the policy is not called again), and generation in the
local model's worker thread stops within a decoding step: only the cancelled request's
rows, when dynamic batching merged it with others.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from served import ThreadServer, start_tts_serve  # noqa: E402

from langchain_tts import create_tts_graph
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.types import Step, Trajectory, Usage
from langchain_tts.models import WEIGHTS_DIR
from langchain_tts.policies.base import PolicyResult, StepPolicy
from langchain_tts.testing import FakePRM

HAS_WEIGHTS = (WEIGHTS_DIR / "prm" / "model.safetensors").exists()
requires_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="embedded weights not built yet")
pytestmark = pytest.mark.filterwarnings("ignore:Accessing the 'model_fields':DeprecationWarning")


class SlowPolicy(StepPolicy):
    """Never finishes a solution; each call takes ``delay`` seconds (awaited)."""

    name = "slow"
    num_parameters = 1000

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.calls = 0

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        self.calls += 1
        await asyncio.sleep(self.delay)
        rows = [[Step(text=f"step {len(p.steps)}", tokens=2) for _ in range(n)] for p in prefixes]
        return PolicyResult(steps=rows, usage=Usage(policy_calls=1))


def long_search(policy: StepPolicy):
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    return create_tts_graph(
        policy, prm, "beam_search", {"n": 4, "beam_width": 2, "max_steps": 10**4}
    )


async def wait_for(pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def test_a_cancelled_ainvoke_stops_the_search_within_one_step():
    policy = SlowPolicy()
    graph = long_search(policy)

    async def main() -> None:
        task = asyncio.create_task(graph.ainvoke({"question": "q"}, {"recursion_limit": 10**5}))
        await wait_for(lambda: policy.calls >= 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        at_cancel = policy.calls
        await asyncio.sleep(0.5)  # ten policy delays: a running search would call again
        assert policy.calls == at_cancel

    asyncio.run(main())


# -- the local model's worker thread -----------------------------------------------------------
@pytest.fixture(scope="module")
def endless_policy():
    """The embedded policy with EOS disabled: every row decodes ``max_step_tokens`` tokens."""
    if not HAS_WEIGHTS:
        pytest.skip("embedded weights not built yet")
    from langchain_tts.models import load_default_policy

    policy = load_default_policy()
    policy.eos_token_ids = []
    return policy


LONG = SamplingParams(temperature=1.0, max_step_tokens=300, stop_at_step=False, seed=3)


def test_cancel_stops_generation_in_the_worker_thread(endless_policy):
    policy = endless_policy

    async def main() -> float:
        prefixes = [Trajectory(question="Start with 5. Add 4.")]
        task = asyncio.create_task(policy.agenerate(prefixes, n=32, params=LONG))
        await asyncio.sleep(0.5)
        assert policy._lock.locked(), "generation should still be running"
        t0 = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The worker holds the model lock while it decodes: free means it stopped.
        assert policy._lock.acquire(timeout=5)
        policy._lock.release()
        return time.perf_counter() - t0

    assert asyncio.run(main()) < 1.0


def test_only_the_cancelled_requests_rows_stop_in_a_merged_batch(endless_policy):
    policy = endless_policy
    params = SamplingParams(temperature=1.0, max_step_tokens=400, stop_at_step=False, seed=7)
    mine, theirs = (
        [Trajectory(question="Start with 5. Add 4.")],
        [Trajectory(question="Start with 2.")],
    )
    alone = policy.generate(theirs, n=4, params=params)

    async def main() -> PolicyResult:
        policy._lock.acquire()  # hold the model so that both requests queue up and merge
        try:
            a = asyncio.create_task(policy.agenerate(mine, n=4, params=params))
            b = asyncio.create_task(policy.agenerate(theirs, n=4, params=params))
            await wait_for(lambda: len(policy._coalescer._pending) == 2)
        finally:
            policy._lock.release()
        await wait_for(lambda: not policy._coalescer._pending)
        await asyncio.sleep(0.05)  # the merged batch is decoding (400 tokens a row)
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        return await b

    sizes = policy._coalescer.batches_run
    merged = asyncio.run(main())
    assert policy._coalescer.sizes_since(sizes) == [2]  # one batch held both requests
    assert [[s.text for s in row] for row in merged.steps] == [
        [s.text for s in row] for row in alone.steps
    ]
    assert all(s.tokens == 400 for row in merged.steps for s in row)


def test_a_cancelled_request_leaves_the_queue_without_waiting_for_the_model(endless_policy):
    policy = endless_policy

    async def main() -> float:
        policy._lock.acquire()  # somebody else's batch holds the model
        try:
            task = asyncio.create_task(policy.agenerate([Trajectory(question="q")], 2, LONG))
            await wait_for(lambda: len(policy._coalescer._pending) == 1)
            t0 = time.perf_counter()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_for(lambda: not policy._coalescer._pending, timeout=2)
            return time.perf_counter() - t0
        finally:
            policy._lock.release()

    assert asyncio.run(main()) < 0.5


# -- over HTTP -----------------------------------------------------------------------------------
httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def slow_app():
    pytest.importorskip("langserve")
    from langchain_tts.serve import create_app

    policy = SlowPolicy()
    prm = FakePRM(lambda t: [0.5] * len(t.steps))
    app = create_app(
        policy, prm, ["beam_search"], configs={"beam_search": {"max_steps": 10**4, "n": 4}}
    )
    with ThreadServer(app) as server:
        yield server, policy


def calls_stop(policy: SlowPolicy, before: int) -> None:
    """The policy was called for the request, then stops being called soon after the
    hang-up: a quiet 0.3 s within 2 s, then nothing for another 0.5 s (ten policy delays)."""
    deadline = time.monotonic() + 1.0
    while policy.calls <= before:  # the search did start
        assert time.monotonic() < deadline, "the request never reached the policy"
        time.sleep(0.01)
    deadline = time.monotonic() + 2.0
    last, changed = policy.calls, time.monotonic()
    while time.monotonic() - changed < 0.3:
        assert time.monotonic() < deadline, "the search kept calling the policy"
        time.sleep(0.02)
        if policy.calls != last:
            last, changed = policy.calls, time.monotonic()
    time.sleep(0.5)
    assert policy.calls == last, f"{policy.calls - last} policy calls after the client left"


@pytest.mark.parametrize("endpoint", ["invoke", "batch", "stream"])
def test_a_client_that_hangs_up_stops_its_search(slow_app, endpoint):
    server, policy = slow_app
    url = f"{server.url}/tts/beam_search/{endpoint}"
    body = {"input": {"question": "q"}, "config": {"recursion_limit": 10**5}}
    if endpoint == "batch":
        body = {"inputs": [{"question": "q"}, {"question": "r"}], "config": body["config"]}
    before = policy.calls
    if endpoint == "stream":
        with httpx.stream("POST", url, json=body, timeout=30) as resp:
            assert resp.status_code == 200
            for _ in resp.iter_lines():
                if policy.calls >= before + 3:
                    break  # a few steps streamed: hang up
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=body, timeout=0.6)
    calls_stop(policy, before)
    # the server still answers
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


@pytest.mark.slow
@requires_weights
def test_sigterm_ends_tts_serve_mid_request(tmp_path: Path):
    proc, url = start_tts_serve(
        tmp_path,
        *("--strategy", "best_of_n", "--log-level", "warning"),
        *("--max-knob", "n=none", "--max-knob", "max_tokens=none"),  # a run for minutes
    )
    try:
        answers: list[object] = []

        def heavy() -> None:  # a request that would run for minutes
            question = "Start with 3. Add 4. Multiply by 2. Subtract 5. Add 9. Multiply by 3."
            body = {"input": {"question": question}}
            knobs = {"n": 8000, "temperature": 1.0, "max_tokens": 1e12}
            body["config"] = {"configurable": knobs}
            try:
                answers.append(httpx.post(f"{url}/tts/best_of_n/invoke", json=body, timeout=60))
            except httpx.HTTPError as e:
                answers.append(e)

        client = threading.Thread(target=heavy, daemon=True)
        client.start()
        time.sleep(3)  # the search is running
        assert not answers, answers
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        took = time.monotonic() - t0
        assert took < 5, f"tts serve took {took:.1f} s to exit after SIGTERM"
        client.join(timeout=5)
        answer = answers[0]
        assert isinstance(answer, httpx.HTTPError) or answer.status_code == 503, answer
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


@requires_weights
def test_client_mistakes_are_4xx_not_backend_failures():
    """A lone surrogate in the question and a seed no generator takes are the client's
    mistakes (422 / 400 naming them), not a 502 "backend failure"."""
    from langchain_tts.serve import create_app

    with ThreadServer(create_app(strategies=["best_of_n"])) as server:
        url = f"{server.url}/tts/best_of_n/invoke"
        body = '{"input": {"question": "Start with 3.\\ud800 Add 4."}}'
        resp = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert resp.status_code == 422 and "not valid Unicode" in resp.text, resp.text
        body = {"input": {"question": "Start with 3. Add 4."}}
        body["config"] = {"configurable": {"seed": 10**30, "n": 2}}
        resp = httpx.post(url, json=body, timeout=30)
        assert resp.status_code == 400 and "seed" in resp.text, resp.text


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() tells the two apart")
def test_a_backend_raising_cancelled_error_itself_is_a_backend_error():
    """An HTTP client giving up inside raises CancelledError although nobody cancelled the
    run: that is the backend failing (a BackendError naming it), not a cancellation."""
    from langchain_tts import BackendError, create_tts_graph
    from langchain_tts.testing import FakePolicy, FakePRM

    class GivesUp(FakePolicy):
        async def _agenerate(self, prefixes, n, params):
            raise asyncio.CancelledError("the client gave up")

    graph = create_tts_graph(GivesUp(lambda p, i: "3+4=7"), FakePRM(lambda t: [0.5] * len(t.steps)),
                             "beam_search", {"n": 4, "beam_width": 2})  # fmt: skip
    with pytest.raises(BackendError, match="fake-policy failed while sampling.*CancelledError"):
        asyncio.run(graph.ainvoke({"question": "Start with 3. Add 4."}))
