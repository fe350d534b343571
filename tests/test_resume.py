"""Threads over HTTP on SQLite: a run killed with SIGKILL resumes when its request is resent
to the restarted server (no finished step recomputed, usage counted once), a second run on a
running thread is a 409, API keys keep clients' threads apart, old checkpoints are pruned.

The servers are ``tts serve --app served:create`` processes (tests/served.py): beam search
on a slow oracle policy that logs each call, so a test sees which steps were computed where.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("langserve")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from langchain_core.messages import HumanMessage  # noqa: E402
from served import (  # noqa: E402
    LONG_QUESTION,
    Worker,
    calls,
    in_background,
    invoke_body,
    wait_for_calls,
)

from langchain_tts.checkpoint import parse_db  # noqa: E402
from langchain_tts.core.errors import ConfigError  # noqa: E402
from langchain_tts.threads import (  # noqa: E402
    api_key_auth,
    input_digest,
    load_api_keys,
    namespaced,
)

# LangServe 0.3.3 reads model_fields off instances (pydantic 2.11+ deprecates it).
pytestmark = pytest.mark.filterwarnings("ignore:Accessing the 'model_fields':DeprecationWarning")
OTHER_QUESTION = "Start with 5. Add 2. Multiply by 3. Subtract 4. Add 9. Multiply by 2."
INVOKE = "/tts/beam_search/invoke"
STEPS = 7  # LONG_QUESTION's gold steps: six operations and the boxed answer


def test_checkpoint_db_forms():
    assert parse_db("threads.db") == ("sqlite", "threads.db")
    assert parse_db("sqlite:///threads.db") == ("sqlite", "threads.db")
    assert parse_db("sqlite:////tmp/t.db") == ("sqlite", "/tmp/t.db")
    assert parse_db(Path("/tmp/t.db")) == ("sqlite", "/tmp/t.db")
    url = "postgresql://u@127.0.0.1:5432/tts"
    assert parse_db(url) == ("postgres", url)
    with pytest.raises(ConfigError, match="postgresql://"):
        parse_db("mysql://x/y")
    with pytest.raises(ConfigError, match="name a file"):
        parse_db("sqlite://")


def test_api_keys_file(tmp_path: Path):
    f = tmp_path / "keys"
    f.write_text("# key namespace\nk-alice alice\n\nk-bob   bob  # second client\n")
    assert load_api_keys(f) == {"k-alice": "alice", "k-bob": "bob"}
    f.write_text('{"k1": "team-a"}')
    assert load_api_keys(f) == {"k1": "team-a"}
    for bad, match in [
        ("k1 a:b\n", "without ':'"),
        ("k1\n", "KEY NAMESPACE"),
        ("k1 a\nk1 b\n", "listed twice"),
        ("# nothing\n", "no keys"),
    ]:
        f.write_text(bad)
        with pytest.raises(ConfigError, match=match):
            load_api_keys(f)
    assert namespaced("alice", "t1") == "alice:t1" and namespaced(None, "t1") == "t1"


def test_api_key_auth_reads_bearer_and_x_api_key():
    from starlette.requests import Request

    auth = api_key_auth({"k-alice": "alice"})

    def request(*headers: tuple[str, str]) -> Request:
        raw = [(k.encode(), v.encode()) for k, v in headers]
        return Request({"type": "http", "headers": raw, "method": "GET", "path": "/"})

    assert auth(request(("authorization", "Bearer k-alice"))) == "alice"
    assert auth(request(("x-api-key", "k-alice"))) == "alice"
    assert auth(request(("authorization", "Bearer k-bob"))) is None
    assert auth(request()) is None


def test_input_digest_is_the_request_not_its_form():
    knobs = {"n": 2, "thread_id": "t", "checkpoint_ns": ""}
    a = input_digest({"messages": [HumanMessage("q")]}, knobs)
    assert a == input_digest({"messages": [HumanMessage("q", id="x")]}, {"n": 2})
    assert a != input_digest({"messages": [HumanMessage("q2")]}, knobs)
    assert a != input_digest({"messages": [HumanMessage("q")]}, {"n": 4})


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'threads.db'}"


@pytest.fixture
def worker(tmp_path: Path, db: str) -> Iterator[Worker]:
    w = Worker(tmp_path, db, name="first")
    try:
        yield w.wait_ready()
    finally:
        w.stop()


def test_killed_run_resumes_after_restart_and_a_running_thread_is_409(
    tmp_path: Path, db: str, worker: Worker
):
    log = worker.calls
    # two runs in flight: "t" will be resent as it was, "u" gets a new question
    in_background(worker.post, INVOKE, invoke_body(LONG_QUESTION, "t"))
    in_background(worker.post, INVOKE, invoke_body(LONG_QUESTION + " Add 1.", "u"))
    wait_for_calls(log, LONG_QUESTION, 3)
    # a second run on a running thread: refused, before it starts (invoke and stream)
    r = worker.post(INVOKE, invoke_body(LONG_QUESTION, "t"))
    assert r.status_code == 409 and "run in progress" in r.json()["detail"]
    r = worker.post("/tts/beam_search/stream", invoke_body(LONG_QUESTION, "t"))
    assert r.status_code == 409
    wait_for_calls(log, LONG_QUESTION + " Add 1.", 3)
    worker.kill()  # SIGKILL mid-search
    before = [s for _, s in calls(log, LONG_QUESTION)]
    assert len(before) < STEPS, "the run finished before it was killed"

    again = Worker(tmp_path, db, name="second")
    try:
        again.wait_ready()
        r = again.post(INVOKE, invoke_body(LONG_QUESTION, "t"))
        assert r.status_code == 200, r.text
        out = r.json()["output"]
        assert out["answer"] == "46"
        after = [s for p, s in calls(log, LONG_QUESTION) if p == again.proc.pid]
        # only the step in flight when it was killed is computed again
        assert after[0] == before[-1] and sorted(set(before) | set(after)) == list(range(STEPS))
        assert out["usage"]["policy_calls"] == STEPS  # counted once

        # another input on an interrupted thread starts a new turn on it
        r = again.post(INVOKE, invoke_body(OTHER_QUESTION, "u"))
        assert r.status_code == 200, r.text
        assert r.json()["output"]["answer"] == "52"
        assert [s for _, s in calls(log, OTHER_QUESTION)][0] == 0
        # and the thread is free again once its run ended
        r = again.post(INVOKE, invoke_body(LONG_QUESTION, "t"))
        assert r.status_code == 200 and r.json()["output"]["answer"] == "46"
        # streamed runs (stream, stream_events) hold their thread too
        for route in ("/tts/beam_search/stream", "/tts/beam_search/stream_events"):
            question = f"{LONG_QUESTION} Add {len(route)}."
            body = invoke_body(question, route)
            if route.endswith("events"):
                body["version"] = "v2"
            in_background(again.post, route, body)
            wait_for_calls(log, question, 2)
            r = again.post(INVOKE, invoke_body(question, route))
            assert r.status_code == 409, (route, r.text)
    finally:
        again.stop()


def test_api_keys_isolate_threads_and_old_checkpoints_are_pruned(tmp_path: Path, db: str):
    keys = tmp_path / "keys"
    keys.write_text("k-alice alice\nk-bob bob\n")
    w = Worker(tmp_path, db, "--api-keys", str(keys), "--keep-checkpoints", "2", delay=0)
    alice = {"Authorization": "Bearer k-alice"}
    bob = {"X-API-Key": "k-bob"}
    try:
        w.wait_ready()
        body = invoke_body(LONG_QUESTION, "t1", chat=True)
        r = w.post(INVOKE, body, headers=alice)
        assert r.status_code == 200 and r.json()["output"]["answer"] == "46"
        # bob names alice's thread: he gets a thread of his own, empty before his turn
        r = w.post(INVOKE, invoke_body(OTHER_QUESTION, "t1", chat=True), headers=bob)
        out = r.json()["output"]
        assert out["answer"] == "52" and len(out["messages"]) == 2
        assert all(LONG_QUESTION not in str(m["content"]) for m in out["messages"])
        # alice's second turn sees her first one (and only hers)
        r = w.post(INVOKE, invoke_body(OTHER_QUESTION, "t1", chat=True), headers=alice)
        out = r.json()["output"]
        assert len(out["messages"]) == 4 and LONG_QUESTION in out["messages"][0]["content"]
        # no key or a wrong one: 401 on every route that runs or lists models
        for headers in ({}, {"Authorization": "Bearer nope"}):
            assert w.post(INVOKE, body, headers=headers).status_code == 401
            r = w.post("/v1/chat/completions", {"model": "beam_search"}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert httpx.get(f"{w.url}/v1/models", headers=headers).status_code == 401
        assert httpx.get(f"{w.url}/v1/models", headers=alice).status_code == 200
        assert httpx.get(f"{w.url}/health").status_code == 200
    finally:
        w.stop()
    path = parse_db(db)[1]
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT thread_id, COUNT(*) FROM checkpoints GROUP BY thread_id")
        counts = dict(rows.fetchall())
    assert set(counts) == {"alice:t1", "bob:t1"}
    assert all(n <= 2 for n in counts.values()), counts  # --keep-checkpoints 2


def test_async_auth_hook_and_a_saver_object_in_process():
    from fastapi.testclient import TestClient
    from langgraph.checkpoint.memory import InMemorySaver
    from served import SlowOracle

    from langchain_tts.serve import create_app
    from langchain_tts.testing import FakePRM

    async def auth(request) -> str | None:  # e.g. a session lookup
        return {"s1": "alice", "s2": "bob"}.get(request.cookies.get("session", ""))

    saver = InMemorySaver()
    prm = FakePRM(lambda t: [0.9] * len(t.steps))
    app = create_app(SlowOracle(), prm, ["beam_search"], checkpointer=saver, auth=auth)
    with TestClient(app) as client:
        body = invoke_body(LONG_QUESTION, "t1", chat=True)
        assert client.post(INVOKE, json=body).status_code == 401
        client.cookies.set("session", "s1")
        r = client.post(INVOKE, json=body)
        assert r.status_code == 200 and r.json()["output"]["answer"] == "46"
        client.cookies.set("session", "s2")
        r = client.post(INVOKE, json=invoke_body(OTHER_QUESTION, "t1", chat=True))
        assert len(r.json()["output"]["messages"]) == 2
    stored = {c.config["configurable"]["thread_id"] for c in saver.list(None)}
    assert stored == {"alice:t1", "bob:t1"}


async def test_clients_that_leave_while_a_lease_is_taken_leave_no_lease(tmp_path: Path):
    """A request cancelled while the worker thread wrote its lease (or dropped it) used to
    leave the lease behind: the thread answered 409 for the lease's lifetime, and the
    table grew with every such thread."""
    import asyncio

    from langchain_tts.threads import SqliteThreadLocks, ThreadBusyError

    db = tmp_path / "leases.db"
    locks = SqliteThreadLocks(db, ttl=30.0)
    for i in range(120):
        task = asyncio.create_task(locks.check(f"t{i}"))
        await asyncio.sleep(0.0005 * (i % 10))  # cancelled at every stage of take and drop
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    left = -1
    for _ in range(100):  # the undoing drops run in worker threads: slower on a loaded host
        await asyncio.sleep(0.1)
        with sqlite3.connect(db) as conn:
            left = conn.execute("SELECT COUNT(*) FROM tts_thread_leases").fetchone()[0]
        if left == 0:
            break
    assert left == 0
    for i in range(120):  # none of them is busy
        try:
            await locks.check(f"t{i}")
        except ThreadBusyError:
            pytest.fail(f"t{i} is still leased")


async def test_keep_checkpoints_prunes_an_in_memory_saver_too():
    """keep_checkpoints trimmed only SQLite and Postgres: with LangGraph's InMemorySaver
    every step of every run stayed in memory (9.5 checkpoints a beam-search run)."""
    from langgraph.checkpoint.memory import InMemorySaver

    from langchain_tts import create_tts_graph
    from langchain_tts.testing import FakePolicy, FakePRM
    from langchain_tts.threads import ThreadLocks, ThreadRuns

    def step(prefix, i):
        return "\\boxed{7}" if len(prefix.steps) >= 3 else f"s{len(prefix.steps)}.{i}"

    saver = InMemorySaver()
    graph = create_tts_graph(FakePolicy(step), FakePRM(lambda t: [0.9] * len(t.steps)),
                             "beam_search", {"n": 4, "beam_width": 2}, checkpointer=saver)  # fmt: skip
    runs = ThreadRuns(ThreadLocks(), keep_checkpoints=1)
    cfg = {"configurable": {"thread_id": "chat"}}
    for turn in ("Start with 3. Add 4.", "Start with 5. Add 2."):
        async with runs.run(graph, {"messages": [HumanMessage(turn)]}, cfg) as (inp, conf):
            out = await graph.ainvoke(inp, conf)
        assert out["answer"] == "7"
    (checkpoints,) = saver.storage["chat"].values()
    assert len(checkpoints) == 1  # the latest holds the whole state
    ((stored, _, _),) = checkpoints.values()
    versions = saver.serde.loads_typed(stored)["channel_versions"]
    blobs = {(k[2], k[3]) for k in saver.blobs if k[0] == "chat"}
    assert blobs <= set(versions.items())  # only the kept checkpoint's channel values
    state = graph.get_state(cfg).values
    assert len(state["messages"]) == 4  # both turns, question and answer each


def test_an_edited_mid_search_checkpoint_goes_on_searching_as_prepare():
    """Time travel: the search nodes route themselves, so an update LangGraph attributes to
    one of them leaves no next node; attributed to ``prepare`` (as the docs say) the fork
    searches on from the edited beams to the uninterrupted run's answer."""
    from langgraph.checkpoint.memory import InMemorySaver

    from langchain_tts.checkpoint import serializer
    from langchain_tts.graph import create_tts_graph
    from langchain_tts.testing import FakePolicy, FakePRM
    from tests.test_turns import adder, prefer_right

    graph = create_tts_graph(FakePolicy(adder), FakePRM(prefer_right), "beam_search",
                             {"n": 4, "beam_width": 2, "seed": 0},
                             checkpointer=InMemorySaver(serde=serializer()))  # fmt: skip
    cfg = {"configurable": {"thread_id": "fork"}}
    ref = graph.invoke({"question": "Start with 5. Add 6."}, cfg)
    mid = next(h for h in graph.get_state_history(cfg) if h.next == ("step",) and h.values["step"])
    fork = graph.update_state(mid.config, {"active": mid.values["active"]}, as_node="prepare")
    assert graph.get_state(fork).next == ("step",)
    out = graph.invoke(None, fork)
    assert out["answer"] == ref["answer"] == "11" and out["stop_reason"] == ref["stop_reason"]


def test_update_state_takes_plain_data_as_a_json_client_sends_it():
    """``usage`` as a dict was an AttributeError in the reducer, and beams as dicts were
    kept as dicts (a serializer warning on every checkpoint): both are read as the
    package's types; anything else for ``usage`` is an error naming what it takes."""
    import warnings

    from langgraph.checkpoint.memory import InMemorySaver

    from langchain_tts.checkpoint import serializer
    from langchain_tts.core.types import Trajectory, Usage
    from langchain_tts.graph import create_tts_graph
    from langchain_tts.testing import FakePolicy, FakePRM
    from tests.test_turns import adder, prefer_right

    graph = create_tts_graph(FakePolicy(adder), FakePRM(prefer_right), "beam_search",
                             {"n": 4, "beam_width": 2, "seed": 0},
                             checkpointer=InMemorySaver(serde=serializer()))  # fmt: skip
    cfg = {"configurable": {"thread_id": "plain"}}
    graph.invoke({"question": "Start with 5. Add 6."}, cfg)
    mid = next(h for h in graph.get_state_history(cfg) if h.next == ("step",) and h.values["step"])
    beams = [t.model_dump(mode="json") for t in mid.values["active"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no serializer warnings
        fork = graph.update_state(
            mid.config, {"active": beams, "usage": {"policy_calls": 1}}, as_node="prepare"
        )
        state = graph.get_state(fork).values
    assert all(isinstance(t, Trajectory) for t in state["active"])
    assert isinstance(state["usage"], Usage)
    assert graph.invoke(None, fork)["answer"] == "11"
    with pytest.raises(ValueError, match="a usage update is a Usage"):
        graph.update_state(mid.config, {"usage": 5}, as_node="prepare")


@pytest.mark.parametrize(
    "values",
    [{"candidates": "junk"}, {"active": [5]}, {"finished": 3}, {"usage": True}],
)
def test_a_bad_state_write_is_refused_and_the_thread_stays_usable(values):
    """A write of the wrong kind (what a JSON client may send through ``update_state``) is a
    ValueError (a 4xx over HTTP) before anything is saved. It used to be checkpointed, and
    every later load of the thread failed: its chat and state were lost."""
    from langgraph.checkpoint.memory import InMemorySaver

    from langchain_tts.checkpoint import serializer
    from langchain_tts.graph import create_tts_graph
    from langchain_tts.testing import FakePolicy, FakePRM
    from tests.test_turns import adder, prefer_right

    graph = create_tts_graph(FakePolicy(adder), FakePRM(prefer_right), "beam_search",
                             {"n": 4, "beam_width": 2, "seed": 0},
                             checkpointer=InMemorySaver(serde=serializer()))  # fmt: skip
    cfg = {"configurable": {"thread_id": "bad-write"}}
    graph.invoke({"question": "Start with 5. Add 6."}, cfg)
    before = graph.get_state(cfg)
    with pytest.raises(ValueError):
        graph.update_state(cfg, values)
    after = graph.get_state(cfg)
    assert after.config == before.config and after.values["answer"] == "11"
    assert graph.invoke({"question": "Start with 2. Add 3."}, cfg)["answer"] == "5"
