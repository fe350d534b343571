"""A ``tts serve`` app on a slow oracle policy, and workers that run it in subprocesses.

``tts serve --app served:create`` serves beam search on :class:`SlowOracle` (it writes the
gold next step of a synthetic question, after ``TTS_TEST_DELAY`` seconds) and a constant
PRM. Each policy call appends ``<pid> <step>`` to the file ``TTS_TEST_CALL_LOG``, so a test
can tell which worker computed which step: a resumed run must not recompute finished ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import InputError
from langchain_tts.core.types import Step, Trajectory, Usage
from langchain_tts.eval.synthetic import parse_question
from langchain_tts.policies.base import PolicyResult, StepPolicy

ROOT = Path(__file__).resolve().parent.parent
#: 7 steps (6 operations and the boxed answer), answer 46
LONG_QUESTION = "Start with 3. Add 4. Multiply by 2. Subtract 5. Add 7. Multiply by 3. Subtract 2."


class SlowOracle(StepPolicy):
    """The gold next step of a synthetic question, one call per search step."""

    name = "slow-oracle"
    num_parameters = 1000

    def __init__(self, delay: float = 0.0, log: str | None = None) -> None:
        self.delay, self.log = delay, log

    async def _agenerate(
        self, prefixes: Sequence[Trajectory], n: int, params: SamplingParams
    ) -> PolicyResult:
        if self.log:
            with open(self.log, "a", encoding="utf-8") as f:
                qid = hashlib.sha256(prefixes[0].question.encode()).hexdigest()[:8]
                f.write(f"{os.getpid()} {len(prefixes[0].steps)} {qid}\n")
        await asyncio.sleep(self.delay)
        rows = []
        for p in prefixes:
            prob = parse_question(p.question)
            if prob is None:
                raise InputError(f"not an arithmetic chain: {p.question[:40]!r}")
            rest = prob.gold_steps[len(p.steps) :]
            rows.append([Step(text=rest[0], tokens=len(rest[0]))] * n)
        return PolicyResult(steps=rows, usage=Usage(policy_calls=1))


def create(**kwargs: Any) -> Any:
    """The app factory for ``tts serve --app served:create``."""
    from langchain_tts.serve import create_app
    from langchain_tts.testing import FakePRM

    policy = SlowOracle(
        float(os.environ.get("TTS_TEST_DELAY", "0")), os.environ.get("TTS_TEST_CALL_LOG")
    )
    kwargs["strategies"] = kwargs.get("strategies") or ["beam_search"]
    return create_app(policy, FakePRM(lambda t: [0.9] * len(t.steps)), **kwargs)


def qid(question: str) -> str:
    """How the call log names a question."""
    return hashlib.sha256(question.encode()).hexdigest()[:8]


def calls(log: Path, question: str | None = None) -> list[tuple[int, int]]:
    """``(pid, step)`` of every policy call so far (on ``question`` only, if given)."""
    if not log.exists():
        return []
    rows = [line.split() for line in log.read_text().splitlines() if line.strip()]
    want = None if question is None else qid(question)
    return [(int(p), int(s)) for p, s, q in rows if want is None or q == want]


def wait_for_calls(log: Path, question: str, at_least: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(calls(log, question)) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} policy calls in {timeout} s"
        time.sleep(0.02)


def in_background(fn: Any, *args: Any) -> threading.Thread:
    """Run ``fn(*args)`` in a daemon thread, ignoring the transport error a killed server
    gives it."""

    def run() -> None:
        try:
            fn(*args)
        except httpx.TransportError:
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn in a daemon thread on 127.0.0.1, stopped (and joined) on exit."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class Worker:
    """One ``tts serve --app served:create`` process on 127.0.0.1."""

    def __init__(self, tmp: Path, db: str, *args: str, delay: float = 0.3, name: str = "w"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"{name}-{self.port}.log"
        self.calls = tmp / "calls.log"
        cmd = [sys.executable, "-m", "langchain_tts.cli", "serve", "--app", "served:create"]
        cmd += ["--port", str(self.port), "--checkpoint-db", db, "--log-level", "warning"]
        path = os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": path,
            "TTS_TEST_DELAY": str(delay),
            "TTS_TEST_CALL_LOG": str(self.calls),
        }
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [*cmd, *args], stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )

    def wait_ready(self, timeout: float = 90.0) -> Worker:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, (
                f"worker not up in {timeout} s: {self.log_path.read_text()[-3000:]}"
            )
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)

    def post(self, route: str, body: dict, headers: dict | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}{route}", json=body, headers=headers, timeout=60)

    def kill(self) -> None:
        """SIGKILL: no cleanup, as in a crash."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def invoke_body(question: str, thread_id: str | None = None, *, chat: bool = False) -> dict:
    """A LangServe invoke body: ``question`` (as a chat turn with ``chat``) on a thread."""
    conf: dict[str, Any] = {"n": 2, "beam_width": 1}
    if thread_id:
        conf["thread_id"] = thread_id
    inp = {"messages": [{"role": "user", "content": question}]} if chat else {"question": question}
    return {"input": inp, "config": {"configurable": conf}}


def start_tts_serve(tmp: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """``tts serve ARGS`` on the embedded models in a subprocess (one torch thread, offline),
    its log in ``tmp/serve.log``: ``(process, base URL)`` once ``/health`` answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "langchain_tts.cli", "serve", "--port", str(port), *args]
    # One torch thread: on a small, busy machine oversubscribed threads are 10x slower.
    env = {"OMP_NUM_THREADS": "1", **os.environ, "HF_HUB_OFFLINE": "1"}
    log = tmp / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"tts serve did not come up: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
