"""PRM formats (Math-Shepherd, Skywork, RLHFlow, vLLM pooling over HTTP) on tiny random models.

Each decoder format is checked against a manual full forward of the same checkpoint at
read-out positions derived independently from the token ids, so a wrong position, label
token or head shows up as a score mismatch. No hub, no trained weights.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from langchain_tts.core.errors import BackendError, ConfigError, PRMOutputError
from langchain_tts.core.types import Trajectory
from langchain_tts.models.io import save_hf
from langchain_tts.models.tiny_llama import LlamaBody, TinyLlamaConfig, TinyLlamaForCausalLM
from langchain_tts.models.tokenizer import build_tokenizer
from langchain_tts.prms.http import HTTPRewardPRM
from langchain_tts.prms.math_shepherd import MathShepherdPRM
from langchain_tts.prms.rlhflow import RLHFlowPRM
from langchain_tts.prms.skywork import SkyworkPRM, load_value_head
from langchain_tts.testing import FakeOpenAIServer

TRAJS = [
    Trajectory(question="Start with 3. Add 4.", steps=["3+4=7", "\\boxed{7}"]),
    Trajectory(question="Start with 12.", steps=[]),  # nothing to score
    Trajectory(question="Start with 7. Subtract 2.", steps=["7-2=5"]),
    Trajectory(question="Start with 2.", steps=["2*3=6", "6+1=7", "7-1=6"]),
]
LLAMA_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}</s>{% endfor %}"
)


def tiny_cfg(vocab: int) -> TinyLlamaConfig:
    return TinyLlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=1,
        intermediate_size=128,
        max_position_embeddings=512,
    )


def save_causal_lm(out: Path, tok: Any, seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = tiny_cfg(len(tok))
    model = TinyLlamaForCausalLM(cfg)
    torch.nn.init.normal_(model.lm_head.weight, std=0.2)  # tied: visible score spread
    save_hf(model, cfg, out, "LlamaForCausalLM")
    tok.save_pretrained(str(out))  # the extended tokenizer replaces the default one
    return out


def count_forwards(prm: Any) -> list[int]:
    calls: list[int] = []
    prm.body().register_forward_hook(lambda m, args, kw, out: calls.append(1), with_kwargs=True)
    return calls


def check_scores(scores: list[list[float]], expected: list[list[float]]) -> None:
    assert [len(r) for r in scores] == [len(r) for r in expected]
    for got, want in zip(scores, expected):
        assert got == pytest.approx(want, abs=1e-5)
        assert all(0.0 <= s <= 1.0 for s in got)


# -- Math-Shepherd -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shepherd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = build_tokenizer()
    tok.add_tokens(["ки"])
    return save_causal_lm(tmp_path_factory.mktemp("shepherd"), tok, seed=2)


def test_math_shepherd_reads_plus_at_every_tag(shepherd_dir: Path):
    prm = MathShepherdPRM.from_pretrained(shepherd_dir)
    prm.cache_tokens = 0  # the format alone: one plain forward (reuse: below)
    tok = prm.tokenizer
    assert prm.candidate_ids == [tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")]
    assert prm.render(TRAJS[3]) == "Start with 2. 2*3=6 ки\n6+1=7 ки\n7-1=6 ки"
    forwards = count_forwards(prm)
    result = prm.score(TRAJS)
    assert len(forwards) == 1  # every trajectory in one batched forward

    model = AutoModelForCausalLM.from_pretrained(str(shepherd_dir))
    tag = tok.convert_tokens_to_ids("ки")
    expected, tokens = [], 0
    for t in TRAJS:
        if not t.steps:
            expected.append([])
            continue
        ids = tok(prm.render(t))["input_ids"]
        tokens += len(ids)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        pos = [k for k, i in enumerate(ids) if i == tag]
        expected.append(logits[pos][:, prm.candidate_ids].softmax(-1)[:, 0].tolist())
    check_scores(result.scores, expected)
    assert len({round(s, 6) for r in result.scores for s in r}) > 3  # not a constant
    u = result.usage
    assert (u.prm_calls, u.prm_tokens) == (1, tokens)
    assert u.prm_flops == 2.0 * prm.num_parameters * tokens


def test_math_shepherd_tag_inside_a_step_is_removed(shepherd_dir: Path):
    prm = MathShepherdPRM.from_pretrained(shepherd_dir)
    t = Trajectory(question="Q", steps=["a ки b", "c"])
    assert prm.render(t) == "Q a  b ки\nc ки"
    assert len(prm.score([t]).scores[0]) == 2


# -- Skywork ---------------------------------------------------------------------------------
class _ValueHead(torch.nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.summary = torch.nn.Linear(hidden, 1)


class _SkyworkLike(torch.nn.Module):
    """``model.*`` decoder body + ``v_head.summary``: the Skywork-o1-Open-PRM checkpoint layout."""

    def __init__(self, cfg: TinyLlamaConfig):
        super().__init__()
        self.model = LlamaBody(cfg)
        self.v_head = _ValueHead(cfg.hidden_size)
        torch.nn.init.normal_(self.v_head.summary.weight, std=1.0)
        torch.nn.init.normal_(self.v_head.summary.bias, std=0.5)


@pytest.fixture(scope="module")
def skywork_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    cfg = tiny_cfg(len(build_tokenizer()))
    out = tmp_path_factory.mktemp("skywork")
    save_hf(_SkyworkLike(cfg), cfg, out, "LlamaForPrmModel")
    return out


def test_skywork_value_head_at_each_step_token(skywork_dir: Path):
    prm = SkyworkPRM.from_pretrained(skywork_dir)
    prm.cache_tokens = 0  # the format alone: one plain forward (reuse: below)
    tok = prm.tokenizer
    nl = tok.convert_tokens_to_ids("\n")
    ids, pos = prm.encode(TRAJS[3])
    manual = tok.encode("<s>Start with 2.\n", add_special_tokens=False)
    want_pos = []
    for s in TRAJS[3].steps:
        manual += tok.encode(s, add_special_tokens=False) + [nl]
        want_pos.append(len(manual) - 1)
    assert (ids, pos) == (manual, want_pos) and ids[0] == tok.bos_token_id

    forwards = count_forwards(prm)
    result = prm.score(TRAJS)
    assert len(forwards) == 1

    body = AutoModel.from_pretrained(str(skywork_dir))
    head = load_value_head(skywork_dir)
    from safetensors.torch import load_file

    saved = load_file(str(skywork_dir / "model.safetensors"))
    assert torch.equal(head.weight.data, saved["v_head.summary.weight"].float())
    expected = []
    for t in TRAJS:
        if not t.steps:
            expected.append([])
            continue
        ids, pos = prm.encode(t)
        with torch.no_grad():
            h = body(input_ids=torch.tensor([ids])).last_hidden_state[0]
            expected.append(torch.sigmoid(head(h[pos]).squeeze(-1)).tolist())
    check_scores(result.scores, expected)
    assert result.usage.prm_tokens == sum(len(prm.encode(t)[0]) for t in TRAJS if t.steps)


def test_skywork_without_value_head_says_so(shepherd_dir: Path):
    with pytest.raises(ValueError, match="no value head"):
        load_value_head(shepherd_dir)


# -- RLHFlow -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rlhflow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = build_tokenizer()
    tok.add_tokens(["<|user|>", "<|assistant|>"], special_tokens=True)
    tok.chat_template = LLAMA_TEMPLATE
    return save_causal_lm(tmp_path_factory.mktemp("rlhflow"), tok, seed=4)


def test_rlhflow_scores_each_assistant_turn_in_one_forward(rlhflow_dir: Path):
    prm = RLHFlowPRM.from_pretrained(rlhflow_dir)
    prm.cache_tokens = 0  # the format alone: one plain forward (reuse: below)
    tok = prm.tokenizer
    text, _ = prm.render(TRAJS[0])
    assert text == (
        "<|user|>Start with 3. Add 4. 3+4=7</s><|assistant|>+</s>"
        "<|user|>\\boxed{7}</s><|assistant|>+</s>"
    )
    forwards = count_forwards(prm)
    result = prm.score(TRAJS)
    assert len(forwards) == 1

    model = AutoModelForCausalLM.from_pretrained(str(rlhflow_dir))
    assistant = tok.convert_tokens_to_ids("<|assistant|>")
    plus, minus = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
    assert prm.candidate_ids == [plus, minus]
    expected = []
    for t in TRAJS:
        if not t.steps:
            expected.append([])
            continue
        ids = tok(prm.render(t)[0], add_special_tokens=False)["input_ids"]
        # The reply "+" follows each <|assistant|>; its logits sit one position earlier.
        # "3+4=7" has a "+" too, which must not be read.
        pos = [k for k in range(len(ids) - 1) if ids[k] == assistant and ids[k + 1] == plus]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        expected.append(logits[pos][:, [plus, minus]].softmax(-1)[:, 0].tolist())
    check_scores(result.scores, expected)


def test_rlhflow_rejects_templates_that_swallow_the_reply(rlhflow_dir: Path):
    tok = AutoTokenizer.from_pretrained(str(rlhflow_dir))
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # no roles
    prm = RLHFlowPRM(AutoModelForCausalLM.from_pretrained(str(rlhflow_dir)), tok)
    # "Q x" + "+": still separate char tokens, so the read-out works without role tokens...
    assert len(prm.score([Trajectory(question="Q", steps=["x"])]).scores[0]) == 1
    # ...but a reply merged into another token ("x+") cannot be read: a clear error.
    tok.add_tokens(["x+"])
    with pytest.raises(PRMOutputError, match="not tokenized as the label token"):
        prm.encode(Trajectory(question="Q", steps=["x"]))
    with pytest.raises(PRMOutputError, match="reserved marker"):
        prm.encode(Trajectory(question="Q", steps=["@@LANGCHAIN_TTS_PRM_REPLY@@"]))


# -- vLLM pooling over HTTP ------------------------------------------------------------------
class PoolingServer(FakeOpenAIServer):
    """Answers /pooling (and /tokenize, /detokenize) from ``handler`` and records requests."""

    def __init__(self, handler: Any):
        super().__init__(handler, keep_bodies=True)


@pytest.fixture
def pooling():
    servers: list[PoolingServer] = []

    def start(handler: Any) -> PoolingServer:
        servers.append(PoolingServer(handler))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def step_rows(text: str, tag: str, row: Any) -> list:
    """One row per tag, as vLLM's STEP pooling returns them."""
    return [row(k) for k in range(text.count(tag))]


def test_http_prm_qwen_format_one_request(pooling):
    def handler(path: str, body: dict) -> tuple:
        data = [
            {
                "index": i,
                "object": "pooling",
                "data": step_rows(t, "<extra_0>", lambda k: [0.25, 0.75]),
            }
            for i, t in enumerate(body["input"])
        ]
        return 200, {"data": list(reversed(data)), "usage": {"prompt_tokens": 123}}

    server = pooling(handler)
    prm = HTTPRewardPRM(server.url, "prm", chat_template="none", num_parameters=10)
    result = prm.score(TRAJS)
    assert len(server.requests) == 1
    path, body = server.requests[0]
    assert path == "/pooling" and body["model"] == "prm"
    assert body["input"][0] == "Start with 3. Add 4.\n\n3+4=7<extra_0>\\boxed{7}<extra_0>"
    assert len(body["input"]) == 3  # the step-less trajectory is not sent
    assert result.scores == [[0.75, 0.75], [], [0.75], [0.75] * 3]
    assert (result.usage.prm_calls, result.usage.prm_tokens) == (1, 123)
    assert result.usage.prm_flops == 2.0 * 10 * 123


def test_http_prm_math_shepherd_format_and_logit_rows(pooling):
    def handler(path: str, body: dict) -> tuple:
        # raw logits [good, bad]: softmax([2, 0])[0] = 0.8808
        data = [
            {"index": i, "data": step_rows(t, "ки", lambda k: [2.0, 0.0])}
            for i, t in enumerate(body["input"])
        ]
        return 200, {"data": data}

    server = pooling(handler)
    prm = HTTPRewardPRM(server.url, "ms", format="math_shepherd")
    result = prm.score(TRAJS[:1])
    assert server.requests[0][1]["input"] == ["Start with 3. Add 4. 3+4=7 ки\n\\boxed{7} ки"]
    assert result.scores[0] == pytest.approx([0.880797, 0.880797], abs=1e-6)
    assert result.usage.prm_tokens > 0  # estimated without a usage block


def test_http_prm_client_and_server_templates(pooling):
    tok = build_tokenizer()  # its template: question, then "\n\n" + the assistant answer

    def handler(path: str, body: dict) -> tuple:
        if path == "/tokenize":
            assert body["add_generation_prompt"] is False
            m = body["messages"]
            text = f"[sys]{m[0]['content']}[user]{m[1]['content']}[asst]{m[2]['content']}"
            return 200, {"tokens": [ord(c) for c in text]}
        if path == "/detokenize":
            return 200, {"prompt": "".join(chr(t) for t in body["tokens"])}
        data = [
            {"index": i, "data": step_rows(t, "<extra_0>", lambda k: [0.4, 0.6])}
            for i, t in enumerate(body["input"])
        ]
        return 200, {"data": data}

    server = pooling(handler)
    client = HTTPRewardPRM(
        server.url, "prm", chat_template="client", tokenizer=tok, system_prompt=None
    )
    client.score(TRAJS[2:3])
    assert server.requests[-1][1]["input"] == ["Start with 7. Subtract 2.\n\n7-2=5<extra_0>"]
    assert server.requests[-1][1]["add_special_tokens"] is False

    remote = HTTPRewardPRM(server.url, "prm", system_prompt="S")
    assert remote.score(TRAJS[2:4]).scores == [[0.6], [0.6] * 3]
    assert remote.score(TRAJS[2:3]).scores == [[0.6]]
    assert remote.templating_requests == 4  # two questions, each rendered once
    assert server.requests[-1][1]["input"] == [
        "[sys]S[user]Start with 7. Subtract 2.[asst]7-2=5<extra_0>"
    ]


def test_http_prm_wrong_row_count_and_retries(pooling):
    failures = iter([(500, {"error": "warming up"})])

    def handler(path: str, body: dict) -> tuple:
        return next(failures, None) or (200, {"data": [{"index": 0, "data": [[0.5, 0.5]] * 7}]})

    server = pooling(handler)
    prm = HTTPRewardPRM(server.url, "prm", chat_template="none", backoff=0.01)
    with pytest.raises(PRMOutputError, match="STEP pooling"):
        prm.score(TRAJS[:1])
    assert len(server.requests) == 2  # retried once after the 500

    down = pooling(lambda path, body: (503, {"error": "no"}))
    prm = HTTPRewardPRM(down.url, "prm", chat_template="none", max_retries=1, backoff=0.01)
    with pytest.raises(BackendError, match="/pooling.*503") as info:
        prm.score(TRAJS[:1])
    assert info.value.partial["attempts"] == 2


def test_http_prm_scalar_rows():
    prm = HTTPRewardPRM("http://127.0.0.1:1", "rm", chat_template="none")
    assert prm._probability([0.3]) == 0.3
    assert prm._probability([0.0, 0.0]) == pytest.approx(0.5)
    assert prm._probability(2.0) == pytest.approx(0.880797, abs=1e-6)
    prm.activation = "sigmoid"
    assert prm._probability([0.0]) == 0.5
    with pytest.raises(PRMOutputError, match="hidden states"):
        prm._probability([0.1] * 4096)


def test_http_prm_auto_reads_a_whole_response_one_way(pooling):
    """``activation="auto"`` decided row by row: of two logits, 1.0 read as a probability
    (1.0) outranked 3.0 through the sigmoid (0.95), and the search kept the wrong beam. A
    response holding any logit is read as logits throughout, and so is every later one."""
    rows = iter([[[1.0], [3.0]], [[0.5], [0.9]]])

    def handler(path: str, body: dict) -> tuple:
        return 200, {"data": [{"index": 0, "data": next(rows)}]}

    server = pooling(handler)
    prm = HTTPRewardPRM(server.url, "rm", chat_template="none")
    two_steps = Trajectory(question="Start with 3. Add 4.", steps=["3+4=7", "\\boxed{7}"])
    first = prm.score([two_steps]).scores[0]
    assert first == pytest.approx([0.731059, 0.952574], abs=1e-6) and prm.logits_seen
    later = prm.score([two_steps]).scores[0]  # in [0, 1], but this server sends logits
    assert later == pytest.approx([0.622459, 0.710950], abs=1e-6)


def test_http_prm_rows_that_are_no_scores_are_errors_not_perfect_scores():
    """An infinite logit went through the sigmoid as a score of exactly 1.0 and won the
    vote; a probability a rounding error above 1 was read as a logit (0.73)."""
    prm = HTTPRewardPRM("http://127.0.0.1:1", "rm", chat_template="none")
    for row in ([math.inf], -math.inf, [math.inf, 0.0], ["a", "b"], None, {}, [], [True]):
        with pytest.raises(PRMOutputError, match="finite numbers"):
            prm._probability(row)
    assert prm._probability([1.0000001]) == 1.0 and prm._probability([-1e-9]) == 0.0
    assert prm._probability([-1e-9, 1.000000001]) == 1.0  # a distribution, rounded
    assert prm._probability(1.5) == pytest.approx(0.817574, abs=1e-6)  # a logit


def test_http_prm_broken_replies_are_typed_errors(pooling):
    cases = {
        "renumbered": (
            lambda body: {"data": [{"index": 0, "data": [[0.4, 0.6]]}] * len(body["input"])},
            "numbered",
        ),
        "negative tokens": (
            lambda body: {
                "data": [{"index": i, "data": [[0.4, 0.6]]} for i in range(len(body["input"]))],
                "usage": {"prompt_tokens": -500},
            },
            "prompt_tokens=-500",
        ),
        "an error with a 200": (lambda body: {"error": {"message": "OOM"}}, "error object.*OOM"),
    }
    for answer, match in cases.values():
        server = pooling(lambda path, body, answer=answer: (200, answer(body)))
        prm = HTTPRewardPRM(server.url, "prm", chat_template="none", max_retries=0)
        one_step = [Trajectory(question="q", steps=["1+1=2"])] * 2
        with pytest.raises(BackendError, match=match):
            prm.score(one_step)


@pytest.mark.parametrize("kind", ["shepherd", "skywork", "rlhflow"])
def test_incremental_scores_equal_a_plain_forward(kind: str, request: pytest.FixtureRequest):
    """Every decoder format scores through the prefix cache: a child reads its parent's
    tokens from it, and the scores are the plain forward's."""
    cls = {"shepherd": MathShepherdPRM, "skywork": SkyworkPRM, "rlhflow": RLHFlowPRM}[kind]
    path = request.getfixturevalue(f"{kind}_dir")
    on, off = cls.from_pretrained(path), cls.from_pretrained(path)
    off.cache_tokens = 0
    parents = [t for t in TRAJS if t.steps]
    children = [t.copy_with(steps=[*t.steps, "9-1=8"]) for t in parents]
    cached = 0
    for call in (parents, children):
        a, b = on.score(call), off.score(call)
        check_scores(a.scores, b.scores)
        assert a.usage.prm_tokens + a.usage.prm_cached_tokens == b.usage.prm_tokens
        cached = a.usage.prm_cached_tokens
    assert cached > 0 and on._incremental_ok is True


def test_a_step_tag_the_tokenizer_cuts_in_pieces_is_refused(shepherd_dir: Path):
    """The tag's score was read at its last piece, a token other text shares: scores
    landed on the wrong positions with no error."""
    with pytest.raises(ConfigError, match="no token for the step tag 'xyz'"):
        MathShepherdPRM.from_pretrained(shepherd_dir, step_tag="xyz")  # three characters


def test_a_step_tag_inside_the_question_is_removed(tiny_prm_dir: Path):
    """A question holding the tag gave the PRM one score more than the steps: a
    PRMOutputError blaming the steps."""
    from langchain_tts.prms.qwen import QwenPRM

    prm = QwenPRM.from_pretrained(tiny_prm_dir)
    t = Trajectory(question="Start with 3. <extra_0> Add 4.", steps=["3+4=7"])
    assert prm.render(t).count("<extra_0>") == 1
    assert len(prm.score([t]).scores[0]) == 1
    # inside a step a space takes its place: the halves were glued ("23" + "23*3" = "2323*3")
    glued = Trajectory(question="Start with 3.", steps=["3+4=7<extra_0>7*2=14"])
    assert "3+4=7 7*2=14<extra_0>" in prm.render(glued)
