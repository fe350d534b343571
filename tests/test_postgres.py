"""Two ``tts serve`` workers on one PostgreSQL database: a thread's turns land on either
worker with the right answers and history, a run on one worker makes the thread 409 on the
other, a run killed (SIGKILL) on one resumes on the other without recomputing finished
steps, API keys keep clients' threads apart, and old checkpoints are pruned.

The cluster is a throwaway one (tests/pg.py, the ``postgres_url`` fixture); the workers
serve beam search on a slow oracle policy (tests/served.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("langserve")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from served import (  # noqa: E402
    LONG_QUESTION,
    Worker,
    calls,
    in_background,
    invoke_body,
    wait_for_calls,
)

INVOKE = "/tts/beam_search/invoke"
ALICE = {"Authorization": "Bearer k-alice"}
BOB = {"Authorization": "Bearer k-bob"}
#: (question, answer): short ones for the chat turns
TURNS = [
    ("Start with 3. Add 4.", "7"),
    ("Start with 6. Multiply by 2. Subtract 1.", "11"),
    ("Start with 9. Subtract 4. Multiply by 3.", "15"),
]
KEEP = 3


@pytest.fixture(scope="module")
def workers(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Worker, Worker]]:
    tmp = tmp_path_factory.mktemp("pg-workers")
    keys = tmp / "keys"
    keys.write_text("k-alice alice\nk-bob bob\n")
    args = ("--api-keys", str(keys), "--keep-checkpoints", str(KEEP))
    one = Worker(tmp, postgres_url, *args, name="one")
    two = Worker(tmp, postgres_url, *args, name="two")
    try:
        yield one.wait_ready(), two.wait_ready()
    finally:
        one.stop()
        two.stop()


def test_health_names_the_postgres_saver(workers: tuple[Worker, Worker]):
    for w in workers:
        assert httpx.get(f"{w.url}/health").json()["checkpointer"] == "AsyncPostgresSaver"


def test_turns_alternate_between_workers(workers: tuple[Worker, Worker]):
    for k, (question, answer) in enumerate(TURNS):
        w = workers[k % 2]
        r = w.post(INVOKE, invoke_body(question, "chat", chat=True), headers=ALICE)
        assert r.status_code == 200, r.text
        out = r.json()["output"]
        assert out["question"] == question and out["answer"] == answer
        msgs = out["messages"]
        assert len(msgs) == 2 * (k + 1)  # every turn so far, whichever worker ran it
        assert [m["content"] for m in msgs[::2]] == [q for q, _ in TURNS[: k + 1]]


def test_threads_are_per_api_key_across_workers(workers: tuple[Worker, Worker]):
    one, two = workers
    q1, a1 = TURNS[0]
    q2, a2 = TURNS[1]
    r = one.post(INVOKE, invoke_body(q1, "shared-name", chat=True), headers=ALICE)
    assert r.json()["output"]["answer"] == a1
    r = two.post(INVOKE, invoke_body(q2, "shared-name", chat=True), headers=BOB)
    out = r.json()["output"]
    assert out["answer"] == a2 and [m["content"] for m in out["messages"][::2]] == [q2]
    assert one.post(INVOKE, invoke_body(q1, "x")).status_code == 401


def test_checkpoints_are_pruned(workers: tuple[Worker, Worker], postgres_url: str):
    import psycopg

    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT thread_id, COUNT(*) FROM checkpoints GROUP BY thread_id"
        ).fetchall()
        counts = dict(rows)
        blobs = conn.execute(
            "SELECT COUNT(*) FROM checkpoint_blobs WHERE thread_id = 'alice:chat'"
        ).fetchone()[0]
    assert counts.get("alice:chat", 0) >= 1 and "chat" not in counts
    assert all(n <= KEEP for n in counts.values()), counts
    assert blobs <= 40  # a few channels per kept checkpoint, not every step's


def test_run_killed_on_one_worker_resumes_on_the_other(workers: tuple[Worker, Worker]):
    one, two = workers  # runs last: it kills worker one
    body = invoke_body(LONG_QUESTION, "long")
    in_background(one.post, INVOKE, body, ALICE)
    wait_for_calls(one.calls, LONG_QUESTION, 3)
    # the thread is running on worker one: worker two refuses a second run on it
    r = two.post(INVOKE, body, headers=ALICE)
    assert r.status_code == 409, r.text
    one.kill()
    before = [s for p, s in calls(one.calls, LONG_QUESTION) if p == one.proc.pid]
    assert len(before) < 7, "the run finished before it was killed"
    r = two.post(INVOKE, body, headers=ALICE)  # the killed worker's lock went with it
    assert r.status_code == 200, r.text
    out = r.json()["output"]
    assert out["answer"] == "46"
    after = [s for p, s in calls(two.calls, LONG_QUESTION) if p == two.proc.pid]
    assert after[0] == before[-1]  # only the step in flight is computed again
    assert sorted(set(before) | set(after)) == list(range(7))
    assert out["usage"]["policy_calls"] == 7  # usage counted once


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Accessing the 'model_fields':DeprecationWarning")
def test_the_embedded_models_keep_a_chat_thread_in_postgres(postgres_url: str):
    """Two apps on the embedded models (as two workers would be) share one Postgres: a
    thread's second turn, served by the other app, answers its own question and sees the
    whole chat."""
    from fastapi.testclient import TestClient

    from langchain_tts.models import load_default_policy, load_default_prm
    from langchain_tts.serve import create_app

    policy, prm = load_default_policy(), load_default_prm()
    apps = [create_app(policy, prm, ["cot"], checkpointer=postgres_url) for _ in range(2)]
    turns = [("Start with 5. Add 6.", "11"), ("Start with 7. Multiply by 3.", "21")]
    with TestClient(apps[0]) as one, TestClient(apps[1]) as two:
        for k, (client, (question, answer)) in enumerate(zip([one, two], turns)):
            body = {
                "input": {"messages": [{"type": "human", "content": question}]},
                "config": {"configurable": {"thread_id": "embedded-chat"}},
            }
            out = client.post("/tts/cot/invoke", json=body).json()["output"]
            assert out["question"] == question and out["answer"] == answer
            assert len(out["messages"]) == 2 * k + 2


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Accessing the 'model_fields':DeprecationWarning")
def test_the_embedded_router_keeps_a_chat_thread_in_postgres(postgres_url: str):
    """The router as ``tts serve`` serves it on the embedded models (the verifier estimate,
    the calibrated table, strategies from the verified steps), its route and estimate
    checkpointed in Postgres: a second turn on the other app answers its own question."""
    from fastapi.testclient import TestClient

    from langchain_tts.eval.synthetic import make_split
    from langchain_tts.models import load_default_policy, load_default_prm
    from langchain_tts.routing import embedded_router_kwargs
    from langchain_tts.serve import create_app

    policy, prm = load_default_policy(), load_default_prm()
    router = {"router": embedded_router_kwargs("small", "calculator")}
    apps = [
        create_app(policy, prm, ["router"], checkpointer=postgres_url, configs=router)
        for _ in range(2)
    ]
    hard = [p for p in make_split("test", 64) if p.difficulty >= 6][:2]
    with TestClient(apps[0]) as one, TestClient(apps[1]) as two:
        for k, (client, p) in enumerate(zip([one, two], hard)):
            body = {
                "input": {"messages": [{"type": "human", "content": p.question}]},
                "config": {"configurable": {"thread_id": "router-chat", "reuse_probe": False}},
            }
            r = client.post("/tts/router/invoke", json=body)
            assert r.status_code == 200, r.text
            out = r.json()["output"]
            assert out["question"] == p.question and out["difficulty"]["method"] == "verifier"
            assert out["route"]["node"] != "finalize"
            assert isinstance(out["route"]["prefix_steps"], list)
            assert len(out["messages"]) == 2 * k + 2


def test_a_database_that_cannot_be_reached_is_one_clear_error(postgres_url: str):
    """``tts serve --checkpoint-db`` checks the database before it starts: the database's
    own reason, the password hidden, in one line (it was a pool timeout after 30 s)."""
    from typer.testing import CliRunner

    from langchain_tts.checkpoint import check_database
    from langchain_tts.cli import app
    from langchain_tts.core.errors import ConfigError

    check_database(postgres_url)  # reachable: nothing to say
    wrong_role = postgres_url.replace("postgres@", "nobody:s3cret@")
    with pytest.raises(ConfigError, match=r"nobody:\*\*\*@.*nobody") as e:
        check_database(wrong_role)
    assert "s3cret" not in str(e.value)
    res = CliRunner().invoke(app, ["serve", "--checkpoint-db", wrong_role])
    assert res.exit_code == 2 and "cannot connect to the checkpoint database" in res.output


async def test_workers_starting_together_on_a_fresh_database_both_come_up(postgres_url: str):
    """Two savers opening one empty database at once: one creates the tables, the other
    waits, and both are up in seconds. Waiting inside ``pg_advisory_lock`` hung both for
    ever, since the migrations' CREATE INDEX CONCURRENTLY waits for the waiter's snapshot."""
    import asyncio

    import psycopg

    from langchain_tts.checkpoint import async_saver

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE fresh_start")
    url = postgres_url.rsplit("/", 1)[0] + "/fresh_start"
    up: list[str] = []

    async def worker(name: str) -> None:
        async with async_saver(url, pool_size=2) as saver:
            await saver.aget_tuple({"configurable": {"thread_id": "t"}})
            up.append(name)

    await asyncio.wait_for(asyncio.gather(worker("one"), worker("two")), timeout=60)
    assert sorted(up) == ["one", "two"]
