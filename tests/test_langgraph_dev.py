"""``langgraph dev``, run from the repository root on its ``langgraph.json``, loads every
graph, shows the knobs, and runs a search over the LangGraph SDK (stream and wait), on the
embedded models.

The server is a subprocess on 127.0.0.1 with a free port, given at most 90 s to come up and
killed (its whole process group) afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("langgraph_api")
sdk = pytest.importorskip("langgraph_sdk")
httpx = pytest.importorskip("httpx")

from served import free_port  # noqa: E402

from langchain_tts.eval.synthetic import make_split  # noqa: E402
from langchain_tts.models import WEIGHTS_DIR  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = REPO_ROOT / "langgraph.json"
HAS_WEIGHTS = (WEIGHTS_DIR / "prm" / "model.safetensors").exists()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_WEIGHTS, reason="embedded weights not built yet"),
]
STARTUP_S = 90
_API_LINE = re.compile(r"API:\s*(?:\x1b\[[0-9;]*m)*(http://127\.0\.0\.1:\d+)")


def langgraph_bin() -> str:
    exe = Path(sys.executable).with_name("langgraph")
    return str(exe) if exe.exists() else "langgraph"


def start_dev_server(config: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start ``langgraph dev`` and return it with its URL, read from its log once it is up.

    It runs in the config's folder: ``langgraph dev`` resolves the graph paths against the
    working directory."""
    port = free_port()
    cmd = [langgraph_bin(), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--config", config.name]
    env = {"OMP_NUM_THREADS": "1", **os.environ}  # one torch thread: steadier on busy CPUs
    env.update(LANGGRAPH_CLI_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    log = log_path.open("w")  # outside the project: the watcher must not see it
    proc = subprocess.Popen(
        cmd,
        cwd=config.parent,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + STARTUP_S
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"langgraph dev exited:\n{log_path.read_text()[-3000:]}")
        text = log_path.read_text(errors="replace")
        if url is None and (m := _API_LINE.search(text)):
            url = m.group(1)  # it may pick another port than the one asked for
        if url is not None:
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"langgraph dev not ready in {STARTUP_S} s:\n{log_path.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def dev_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("langgraph-dev") / "server.log"
    proc, url = start_dev_server(CONFIG, log)
    try:
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def client(dev_url: str):
    return sdk.get_sync_client(url=dev_url, timeout=120)


def easy_problem():
    return next(p for p in make_split("test", 8) if p.difficulty == 1)


def test_every_graph_in_langgraph_json_is_loaded(client):
    declared = set(json.loads(CONFIG.read_text())["graphs"])
    loaded = {a["graph_id"] for a in client.assistants.search(limit=100)}
    assert declared <= loaded


def test_knobs_show_as_the_context_schema(client):
    (beam,) = client.assistants.search(graph_id="beam_search", limit=1)
    schema = client.assistants.get_schemas(beam["assistant_id"])["context_schema"]
    props = schema["properties"]
    assert {"n", "beam_width", "aggregation", "temperature"} <= set(props)
    assert props["n"]["default"] == 16


def test_stream_a_beam_search_run(client):
    p = easy_problem()
    thread = client.threads.create()
    events, last = [], {}
    for chunk in client.runs.stream(
        thread["thread_id"],
        "beam_search",
        input={"question": p.question},
        config={"configurable": {"n": 4, "seed": 0}},
        stream_mode=["updates", "values"],
    ):
        assert chunk.event != "error", chunk.data
        events.append(chunk.event)
        if chunk.event == "values":
            last = chunk.data
        if chunk.event == "updates":
            assert set(chunk.data) <= {"prepare", "step", "finalize"}
    assert "updates" in events
    assert last["answer"] == p.answer
    assert len(last["candidates"]) == 4  # the knob reached the graph (default n is 16)


def test_context_knobs_and_the_agent_graph(client):
    p = easy_problem()
    thread = client.threads.create()
    out = client.runs.wait(
        thread["thread_id"],
        "best_of_n",
        input={"question": p.question},
        context={"n": 4, "seed": 0},
    )
    assert out["answer"] == p.answer and len(out["candidates"]) == 4
    out = client.runs.wait(
        None, "agent", input={"messages": [{"role": "user", "content": p.question}]}
    )
    assert out["route"] == "direct" and out["answer"] == p.answer


def test_custom_stream_carries_each_search_step(client):
    p = easy_problem()
    thread = client.threads.create()
    custom, updates = [], []
    for chunk in client.runs.stream(
        thread["thread_id"],
        "beam_search",
        input={"question": p.question},
        context={"n": 4, "seed": 0},
        stream_mode=["custom", "updates"],
    ):
        assert chunk.event != "error", chunk.data
        if chunk.event == "custom":
            custom.append(chunk.data)
        elif chunk.event == "updates":
            updates.append(chunk.data)
    steps = [e for e in custom if e["event"] == "tts_step"]
    assert steps and [e["step"] for e in steps] == list(range(1, len(steps) + 1))
    assert all(e["strategy"] == "beam_search" and len(e["beams"]) <= 8 for e in steps)
    assert any(b["score"] is not None for b in steps[-1]["beams"])
    assert custom[-1]["event"] == "tts_done" and custom[-1]["answer"] == p.answer
    assert updates  # the usual updates still come alongside


# -- turns, the router and knobs through the SDK ----------------------------------------------
@pytest.fixture(scope="module")
def greedy_right() -> list:
    """Two questions (different answers) that a greedy CoT on the embedded policy gets right:
    the served ``cot`` graph is greedy too, so its answers are known."""
    from langchain_tts.graph import create_tts_graph
    from langchain_tts.models import load_default
    from langchain_tts.strategies import get_strategy

    policy, _ = load_default()
    cot = create_tts_graph(policy, None, "cot", get_strategy("cot").budget_config(16))
    out = []
    for p in make_split("test", 40):
        if p.difficulty == 1 and all(p.answer != q.answer for q in out):
            if cot.invoke({"question": p.question})["answer"] == p.answer:
                out.append(p)
        if len(out) == 2:
            return out
    pytest.fail("fewer than two questions a greedy CoT gets right")


def test_two_turns_on_one_sdk_thread_answer_their_own_questions(client, greedy_right):
    thread = client.threads.create()
    for k, p in enumerate(greedy_right):
        out = client.runs.wait(
            thread["thread_id"],
            "cot",
            input={"messages": [{"role": "user", "content": p.question}]},
        )
        assert out["question"] == p.question and out["answer"] == p.answer
        assert len(out["messages"]) == 2 * k + 2  # the thread's chat so far
    state = client.threads.get_state(thread["thread_id"])["values"]
    assert state["question"] == greedy_right[-1].question


def test_a_search_continues_from_prefix_steps_sent_through_the_sdk(client):
    p = next(p for p in make_split("test", 40) if len(p.gold_steps) >= 4)
    prefix = p.gold_steps[:2]
    out = client.runs.wait(
        None,
        "beam_search",
        input={"question": p.question, "prefix_steps": prefix},
        context={"n": 4, "seed": 0},
    )
    assert out["candidates"] and all(c["steps"][:2] == prefix for c in out["candidates"])


def test_the_router_graph_with_context_knobs_and_turns(client, greedy_right):
    (router,) = client.assistants.search(graph_id="router", limit=1)
    props = client.assistants.get_schemas(router["assistant_id"])["context_schema"]["properties"]
    assert {"reuse_probe", "reuse_threshold", "max_flops", "max_tokens"} <= set(props)
    thread = client.threads.create()
    for p, ctx in zip(greedy_right, [None, {"reuse_probe": False}]):
        out = client.runs.wait(
            thread["thread_id"],
            "router",
            input={"messages": [{"role": "user", "content": p.question}]},
            context=ctx,
        )
        assert out["question"] == p.question and out["route"]["bin"] in {"easy", "medium", "hard"}
        # the router calibrated for the embedded models: the verifier estimates
        assert out["difficulty"]["method"] == "verifier" and "prefix_steps" in out["route"]
        if ctx is not None:  # the knob reached the graph: no probe reuse, a strategy ran
            assert out["route"]["node"] != "finalize" and out["route"]["reason"] != "reuse_probe"


def test_a_misspelled_knob_is_an_error_naming_the_valid_ones(client, greedy_right):
    q = {"question": greedy_right[0].question}
    try:
        out = client.runs.wait(
            None, "beam_search", input=q, config={"configurable": {"beamwidth": 2}}
        )
        text = json.dumps(out)
    except Exception as e:  # the SDK raises for a failed run on some versions
        text = str(e)
    assert "did you mean 'beam_width'" in text and "valid knobs" in text
    # The server itself drops context keys its context schema lacks (langgraph-api filters
    # them before the run): a misspelled knob in context is ignored there, with a log line.
    out = client.runs.wait(
        None, "beam_search", input=q, context={"beamwidth": 2, "n": 4, "seed": 0}
    )
    assert out["answer"] == greedy_right[0].answer and len(out["candidates"]) == 4


def test_absurd_knobs_are_refused_before_any_compute(client, greedy_right):
    """Strangers call these graphs with no ``tts serve`` in front: the graphs carry its
    limits themselves. ``n=10**9`` once took the server (and its restarts, which resumed the
    run) out of memory; now the run fails at once, naming the limit."""
    q = {"question": greedy_right[0].question}
    for graph, kwargs in (
        ("best_of_n", {"context": {"n": 10**9}}),
        ("best_of_n", {"config": {"configurable": {"n": 10**9}}}),
        ("best_of_n", {"context": {"max_tokens": 1e300}}),
        ("router", {"context": {"max_tokens": 1e300}}),
        # the agent example's subgraphs (an easy question: its direct CoT), per-subgraph knobs
        ("agent", {"config": {"configurable": {"direct_cot": {"n": 10**9}}}}),
        ("agent", {"config": {"configurable": {"direct_cot": {"max_total_tokens": 10**5}}}}),
    ):
        inp = q if graph != "agent" else {"messages": [{"role": "user", "content": q["question"]}]}
        try:
            text = json.dumps(client.runs.wait(None, graph, input=inp, **kwargs))
        except Exception as e:  # the SDK raises for a failed run on some versions
            text = str(e)
        assert "LimitError" in text and "over this server's limit" in text, (kwargs, text)


# -- cancellation ------------------------------------------------------------------------------
def cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) used so far by the processes of a process group (Linux)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # the process group
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A server of its own (URL, process group): nothing else runs on it while CPU is read.
    Its config lives in a temporary folder, where ``langgraph dev`` keeps its state: runs
    persisted by other servers must not resume on it."""
    folder = tmp_path_factory.mktemp("langgraph-dev-cancel")
    config = json.loads(CONFIG.read_text())
    config["dependencies"] = [str(REPO_ROOT)]
    config["graphs"] = {
        name: str(REPO_ROOT / path.removeprefix("./")) for name, path in config["graphs"].items()
    }
    (folder / CONFIG.name).write_text(json.dumps(config))
    proc, url = start_dev_server(folder / CONFIG.name, folder / "server.log")
    try:
        yield url, proc.pid
    finally:
        stop(proc)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc")
def test_runs_cancel_leaves_the_server_idle(dev_server, greedy_right):
    """``runs.cancel`` stops a heavy run at once, the model's worker thread included: the
    server's CPU goes idle, and the next run answers."""
    url, pgid = dev_server
    client = sdk.get_sync_client(url=url, timeout=120)
    thread = client.threads.create()
    # about half a minute of decoding on this machine if nothing stopped it, within the
    # graphs' limits: the most samples, hot enough to ramble to the token caps
    heavy = {"configurable": {"n": 256, "temperature": 3.0}}
    run = client.runs.create(
        thread["thread_id"], "majority_vote", input={"question": greedy_right[0].question},
        config=heavy,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while client.runs.get(thread["thread_id"], run["run_id"])["status"] != "running":
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.2)
    cpu = cpu_seconds(pgid)
    time.sleep(2.0)
    running = cpu_seconds(pgid) - cpu  # CPU seconds in 2 s (a busy machine gives us less)
    assert running > 0.3, "the heavy run is not computing"
    client.runs.cancel(thread["thread_id"], run["run_id"], wait=True)
    status = client.runs.get(thread["thread_id"], run["run_id"])["status"]
    assert status in {"interrupted", "error"}, status
    time.sleep(2.0)  # within ~2 s of the cancel the decoding has stopped
    cpu = cpu_seconds(pgid)
    time.sleep(2.0)
    idle = cpu_seconds(pgid) - cpu
    assert idle < 0.25 * running, f"{idle:.2f} CPU s in 2 s after the cancel, {running:.2f} before"
    out = client.runs.wait(None, "cot", input={"question": greedy_right[1].question})
    assert out["answer"] == greedy_right[1].answer
