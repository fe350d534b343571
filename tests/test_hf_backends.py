"""HFPolicy and QwenPRM on tiny random-weight checkpoints (no trained weights, no hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer
from transformers.modeling_outputs import TokenClassifierOutput

from langchain_tts.backends.sampling import SeededSampler, seeded_uniforms
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.errors import ConfigError, PRMOutputError
from langchain_tts.core.types import Step, Trajectory
from langchain_tts.models.tokenizer import EOS, STEP_TAG
from langchain_tts.policies.hf import HFPolicy, _StopAtDelimiter
from langchain_tts.prms.qwen import QwenPRM

QUESTION = "Start with 3. Add 4."
PREFIXES = [
    Trajectory(question=QUESTION),
    Trajectory(question="Start with 12. Multiply by 2. Subtract 5.", steps=["12*2=24"]),
    Trajectory(question="Start with 7.", steps=["7+1=8", "8-2=6"]),
]
FAST = {"max_step_tokens": 24}


# -- policy ---------------------------------------------------------------------------------
@pytest.fixture
def policy(tiny_policy_dir: Path) -> HFPolicy:
    """A random policy nudged towards "\\n" and EOS, so all three finish reasons occur."""
    pol = HFPolicy.from_pretrained(tiny_policy_dir)
    bias = torch.zeros(pol.model.config.vocab_size)
    bias[pol.tokenizer.convert_tokens_to_ids("\n")] = 4.0
    bias[pol.tokenizer.convert_tokens_to_ids(EOS)] = 1.5
    forward = pol.model.forward

    def biased(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        out.logits = out.logits + bias.to(out.logits)
        return out

    pol.model.forward = biased  # type: ignore[method-assign]
    return pol


def count_generate(pol: HFPolicy, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap ``model.generate``; returns the batch size of every call."""
    calls: list[int] = []
    generate = pol.model.generate

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    monkeypatch.setattr(pol.model, "generate", wrapped)
    return calls


def test_prompt_rendering(policy: HFPolicy) -> None:
    prefix = Trajectory(question=" Q? ", steps=["a", "b"])
    assert policy.render_prompt(prefix) == "Q?\n\na\n\nb\n\n"
    policy.tokenizer.chat_template = None  # fallback: question + delimiter
    assert policy.render_prompt(prefix) == " Q? \n\na\n\nb\n\n"


def test_batch_is_one_generate_call(policy: HFPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_generate(policy, monkeypatch)
    params = SamplingParams(temperature=1.0, seed=0, **FAST)
    result = policy.generate(PREFIXES, n=4, params=params)
    assert calls == [12]
    assert len(result.steps) == 3 and all(len(s) == 4 for s in result.steps)
    steps = [s for row in result.steps for s in row]
    assert all(isinstance(s, Step) and s.tokens > 0 for s in steps)
    assert all(s.tokens <= params.max_step_tokens for s in steps)
    for s in steps:
        assert s.finish_reason in ("step", "eos", "length")
        if s.finish_reason == "step":
            assert policy.step_delimiter not in s.text
            assert s.tokens == len(s.text) + 2  # char-level: the step, then "\n\n"
        elif s.finish_reason == "length":
            assert s.tokens == params.max_step_tokens
        else:
            assert s.tokens >= len(s.text) + 1  # EOS counted, special tokens dropped
    assert {s.finish_reason for s in steps} >= {"step"}

    u = result.usage
    prompt_tokens = 4 * sum(len(policy.encode(p)) for p in PREFIXES)
    assert u.policy_calls == 1 and u.prm_calls == 0
    assert u.policy_prompt_tokens == prompt_tokens
    assert u.policy_generated_tokens == sum(s.tokens for s in steps)
    assert u.policy_flops == pytest.approx(
        2 * policy.num_parameters * (u.policy_prompt_tokens + u.policy_generated_tokens)
    )
    assert u.seconds > 0
    # matmul parameters: everything except the (tied, hence counted as LM head) embedding
    assert 0 < policy.num_parameters <= policy.model.num_parameters()


def test_all_finish_reasons_and_seed(policy: HFPolicy) -> None:
    params = SamplingParams(temperature=1.0, seed=4, max_step_tokens=12)
    a = policy.generate(PREFIXES, n=8, params=params)
    b = policy.generate(PREFIXES, n=8, params=params)
    assert a.steps == b.steps  # seeded
    reasons = {s.finish_reason for row in a.steps for s in row}
    assert reasons == {"step", "eos", "length"}


def test_seeded_samples_do_not_depend_on_the_batch(policy: HFPolicy) -> None:
    # what a graph run gets for its prefixes, alone, inside a bigger call, in other chunks
    params = SamplingParams(temperature=1.0, seed=5, max_step_tokens=12)
    alone = policy.generate(PREFIXES[1:2], n=4, params=params).steps[0]
    assert len({s.text for s in alone}) > 1  # four different samples, not one copied
    policy.batch_size = 3  # chunks of other lengths and company
    with_others = policy.generate(PREFIXES[1:2], n=4, params=params).steps[0]
    assert with_others == alone
    # two merged callers (the request coalescer): each keeps its own seeds
    key = (4, params.model_copy(update={"seed": 0}).model_dump_json())
    merged = policy._run_items([(PREFIXES[0], 0, 5), (PREFIXES[1], 0, 5)], key)
    assert merged[1][0] == alone
    # prefix i of one call draws seeds seed + i*n + j, like vLLM: another seed, other samples
    other = policy.generate(PREFIXES[1:2], n=4, params=params.model_copy(update={"seed": 6}))
    assert other.steps[0] != alone
    # callers that differ only in their seeds share a batch, each with its own samples
    merged = policy._run_items([(PREFIXES[1], 0, 6), (PREFIXES[1], 0, 5)], key)
    assert merged[0][0] == other.steps[0] and merged[1][0] == alone


def test_seeded_sampler_draws_from_the_tempered_top_p_distribution() -> None:
    u = seeded_uniforms(torch.arange(4), 0, 1000)
    assert u.shape == (4, 1000) and 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.02 and torch.equal(
        u, seeded_uniforms(torch.arange(4), 0, 1000)
    )
    assert not torch.equal(u, seeded_uniforms(torch.arange(4), 1, 1000))  # the next token's draw
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    rows = 20000
    ids = torch.zeros((rows, 3), dtype=torch.long)
    for temperature, top_p in ((1.0, 1.0), (0.5, 1.0), (1.0, 0.7)):
        sampler = SeededSampler(list(range(rows)), 2, temperature, top_p)
        picks = sampler(ids, logits.expand(rows, 4).clone()).argmax(-1)
        freq = torch.bincount(picks, minlength=4).float() / rows
        expect = torch.softmax(logits / temperature, -1)
        if top_p < 1:  # the nucleus {0, 1} holds 0.67 + 0.24 >= 0.7 of the mass
            expect = torch.tensor([expect[0], expect[1], 0, 0]) / (expect[0] + expect[1])
        assert torch.allclose(freq, expect, atol=0.015), (temperature, top_p, freq, expect)


def test_chunking(policy: HFPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    policy.batch_size = 5
    calls = count_generate(policy, monkeypatch)
    result = policy.generate(PREFIXES, n=4, params=SamplingParams(seed=0, **FAST))
    assert calls == [5, 5, 2]
    assert [len(s) for s in result.steps] == [4, 4, 4]


def test_greedy(policy: HFPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_generate(policy, monkeypatch)
    params = SamplingParams(temperature=0.0, **FAST)
    result = policy.generate(PREFIXES, n=4, params=params)
    assert calls == [3]  # decoded once per prefix, copied n times
    for row in result.steps:
        assert all(s == row[0] for s in row)
    assert result.usage.policy_prompt_tokens == sum(len(policy.encode(p)) for p in PREFIXES)
    assert result.usage.policy_generated_tokens == sum(row[0].tokens for row in result.steps)
    # left padding does not change a prefix's continuation
    alone = policy.generate([PREFIXES[0]], n=1, params=params)
    assert alone.steps[0][0] == result.steps[0][0]


def test_no_stop_at_step_returns_whole_solution(policy: HFPolicy) -> None:
    params = SamplingParams(temperature=1.0, seed=1, stop_at_step=False, max_step_tokens=40)
    steps = [s for row in policy.generate(PREFIXES, n=4, params=params).steps for s in row]
    assert {s.finish_reason for s in steps} <= {"eos", "length"}
    assert any(policy.step_delimiter in s.text for s in steps)


def test_stop_criterion_ignores_the_prompt_delimiter(policy: HFPolicy) -> None:
    tok = policy.tokenizer
    prompt = tok("Q\n\n")["input_ids"]
    stop = _StopAtDelimiter(tok, "\n\n", len(prompt))
    nl = tok.convert_tokens_to_ids("\n")
    a = tok.convert_tokens_to_ids("a")
    one = torch.tensor([prompt + [nl], prompt + [a]])
    assert stop(one).tolist() == [False, False]  # prompt "\n\n" + "\n" is not a step
    two = torch.tensor([prompt + [nl, nl], prompt + [a, nl]])
    assert stop(two).tolist() == [True, False]
    assert stop.stop_len == {0: 2}


def test_runnable_interface(policy: HFPolicy) -> None:
    steps = policy.invoke({"question": QUESTION, "n": 2, "sampling": FAST})
    assert len(steps) == 2 and all(isinstance(s, Step) for s in steps)


async def test_async_runnable_interface(policy: HFPolicy) -> None:
    steps = await policy.ainvoke({"question": QUESTION, "steps": ["3+4=7"], "n": 2})
    assert len(steps) == 2 and all(isinstance(s, Step) for s in steps)


# -- PRM ------------------------------------------------------------------------------------
@pytest.fixture
def prm(tiny_prm_dir: Path) -> QwenPRM:
    """The format alone: every token through the model's own forward (reuse: below)."""
    p = QwenPRM.from_pretrained(tiny_prm_dir)
    p.cache_tokens = 0
    return p


def test_prm_scores_incrementally_like_a_plain_forward(tiny_prm_dir: Path) -> None:
    on, off = QwenPRM.from_pretrained(tiny_prm_dir), QwenPRM.from_pretrained(tiny_prm_dir)
    off.cache_tokens = 0
    children = [t.copy_with(steps=[*t.steps, "9-1=8"]) for t in TRAJS]
    for call in (TRAJS, children):
        a, b = on.score(call), off.score(call)
        for got, want in zip(a.scores, b.scores, strict=True):
            assert got == pytest.approx(want, abs=1e-5)
        assert a.usage.prm_tokens + a.usage.prm_cached_tokens == b.usage.prm_tokens
    assert a.usage.prm_cached_tokens > a.usage.prm_tokens  # children read their parents
    assert on._incremental_ok is True


TRAJS = [
    Trajectory(question=QUESTION, steps=["3+4=7", "\\boxed{7}"]),
    Trajectory(question="Start with 12. Multiply by 2.", steps=["12*2=24"]),
    Trajectory(question="Start with 7.", steps=["7+1=8", "8-2=6", "6*3=18", "\\boxed{18}"]),
]


def count_forward(p: QwenPRM, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    forward = p.model.forward

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(p.model, "forward", wrapped)
    return calls


def test_prm_scores_one_forward(prm: QwenPRM, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_forward(prm, monkeypatch)
    result = prm.score(TRAJS)
    assert calls == [3]
    assert [len(s) for s in result.scores] == [2, 1, 4]
    assert all(0.0 <= x <= 1.0 for row in result.scores for x in row)
    assert len({round(x, 6) for row in result.scores for x in row}) > 1  # not constant
    u = result.usage
    tokens = sum(len(prm.encode(t)) for t in TRAJS)
    assert u.prm_calls == 1 and u.prm_tokens == tokens and u.policy_calls == 0
    assert u.prm_flops == pytest.approx(2 * prm.num_parameters * tokens)
    assert u.seconds > 0


def test_prm_empty_steps(prm: QwenPRM, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_forward(prm, monkeypatch)
    result = prm.score([Trajectory(question=QUESTION), TRAJS[1], Trajectory(question="x")])
    assert calls == [1]
    assert result.scores[0] == [] and result.scores[2] == [] and len(result.scores[1]) == 1
    calls.clear()
    only_empty = prm.score([Trajectory(question=QUESTION)])
    assert only_empty.scores == [[]] and calls == [] and only_empty.usage.prm_tokens == 0


def test_prm_batch_equals_alone(prm: QwenPRM) -> None:
    batched = prm.score(TRAJS).scores
    for traj, row in zip(TRAJS, batched, strict=True):
        alone = prm.score([traj]).scores[0]
        assert torch.allclose(torch.tensor(alone), torch.tensor(row), atol=1e-5)
    prm.batch_size = 2  # chunked: same scores
    chunked = prm.score(TRAJS).scores
    for a, b in zip(chunked, batched, strict=True):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)


def test_prm_reads_the_step_tag_positions(prm: QwenPRM, tiny_prm_dir: Path) -> None:
    traj = TRAJS[0]
    tok = AutoTokenizer.from_pretrained(tiny_prm_dir)
    model = AutoModelForTokenClassification.from_pretrained(tiny_prm_dir, dtype=torch.float32)
    text = traj.question + "\n\n" + STEP_TAG.join(traj.steps) + STEP_TAG
    assert prm.render(traj) == text  # the embedded template drops the system prompt
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        probs = model(input_ids=ids).logits.softmax(-1)[0, :, 1]
    tag_id = tok.convert_tokens_to_ids(STEP_TAG)
    positions = (ids[0] == tag_id).nonzero().flatten().tolist()
    assert len(positions) == 2 and positions[-1] == ids.shape[1] - 1
    expected = probs[positions]
    assert torch.allclose(torch.tensor(prm.score([traj]).scores[0]), expected, atol=1e-5)
    others = probs[positions[0] - 1]  # a neighbouring, non-tag position differs
    assert not torch.isclose(others, expected[0], atol=1e-4)


def test_prm_strips_tag_inside_step(prm: QwenPRM) -> None:
    """A tag inside a step is no step end: a space takes its place (two halves glued
    together would read as one number)."""
    traj = Trajectory(question=QUESTION, steps=[f"3+4{STEP_TAG}=7", "\\boxed{7}"])
    clean = Trajectory(question=QUESTION, steps=["3+4 =7", "\\boxed{7}"])
    assert prm.score([traj]).scores == prm.score([clean]).scores


def test_prm_tuple_output(prm: QwenPRM, monkeypatch: pytest.MonkeyPatch) -> None:
    """Remote-code PRMs (Qwen2.5-Math-PRM-7B) return a tuple with the logits first."""
    expected = prm.score(TRAJS).scores
    forward = prm.model.forward

    def as_tuple(*args: Any, **kwargs: Any) -> tuple[torch.Tensor]:
        return (forward(*args, **kwargs).logits,)

    monkeypatch.setattr(prm.model, "forward", as_tuple)
    assert prm.score(TRAJS).scores == expected


def test_prm_bad_step_tag(prm: QwenPRM) -> None:
    with pytest.raises(ValueError, match="one token"):
        QwenPRM(prm.model, prm.tokenizer, step_tag="<nope>")


def test_prm_runnable(prm: QwenPRM) -> None:
    scores = prm.invoke({"question": QUESTION, "steps": ["3+4=7", "\\boxed{7}"]})
    assert scores == prm.score([TRAJS[0]]).scores[0]


def test_prm_nan_logits_raise(prm: QwenPRM, monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_forward(input_ids: torch.Tensor, **kwargs: Any) -> TokenClassifierOutput:
        return TokenClassifierOutput(logits=torch.full((*input_ids.shape, 2), float("nan")))

    monkeypatch.setattr(prm.model, "forward", nan_forward)
    with pytest.raises(PRMOutputError, match="fp16"):
        prm.score(TRAJS)


async def test_concurrent_calls_serialize_on_the_model(
    policy: HFPolicy, prm: QwenPRM, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import threading

    active, peak, guard = [0], [0], threading.Lock()
    generate = policy.model.generate

    def tracked(*args: Any, **kwargs: Any) -> Any:
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return generate(*args, **kwargs)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(policy.model, "generate", tracked)
    params = SamplingParams(seed=0, max_step_tokens=8)
    results = await asyncio.gather(
        *(policy.agenerate(PREFIXES[:2], n=2, params=params) for _ in range(3)),
        prm.ascore(TRAJS),
    )
    assert peak[0] == 1
    assert all(len(r.steps) == 2 for r in results[:3]) and len(results[3].scores) == 3


async def test_local_calls_never_wait_for_the_default_executor(
    policy: HFPolicy, prm: QwenPRM
) -> None:
    """A peer that holds every thread of the loop's default pool while it awaits our models
    (a sync-to-async bridge, say) must not starve them: they run on the package's pool."""
    import asyncio
    import concurrent.futures
    import threading

    loop = asyncio.get_running_loop()
    default = concurrent.futures.ThreadPoolExecutor(1)
    loop.set_default_executor(default)
    release = threading.Event()
    held = loop.run_in_executor(None, release.wait, 30)  # the default pool's only thread
    try:
        params = SamplingParams(seed=0, max_step_tokens=4)
        steps, scores = await asyncio.wait_for(
            asyncio.gather(policy.agenerate(PREFIXES[:1], n=2, params=params), prm.ascore(TRAJS)),
            timeout=20,
        )
        assert len(steps.steps) == 1 and len(scores.scores) == len(TRAJS)
        assert not held.done()  # the default pool was busy the whole time
    finally:
        release.set()
        await held
        default.shutdown(wait=False)


# -- misconfiguration -----------------------------------------------------------------------
def test_models_that_would_fail_mid_search_are_refused_when_built(tiny_policy_dir: Path) -> None:
    """Each used to fail mid-run with an IndexError, or never end a step: a pad id past
    the embeddings, a step delimiter the tokenizer cannot write, a model that cannot
    generate; a model with a cache implementation of its own skips prefix reuse instead
    of failing on its second call."""
    from langchain_tts.backends.hf import supports_prefix_reuse

    pol = HFPolicy.from_pretrained(tiny_policy_dir)
    model, tok = pol.model, pol.tokenizer
    vocab = model.get_input_embeddings().weight.shape[0]
    added = HFPolicy.from_pretrained(tiny_policy_dir).tokenizer  # a tokenizer of its own
    added.add_special_tokens({"pad_token": "[PAD]"})  # and no resize_token_embeddings
    with pytest.raises(ConfigError, match=f"pad token id {vocab} is outside.*resize"):
        HFPolicy(model, added)
    if tok.unk_token_id is not None:
        with pytest.raises(ConfigError, match="step_delimiter '§"):
            HFPolicy(model, tok, step_delimiter="§\n")
    with pytest.raises(ConfigError, match="needs a model that generates"):
        HFPolicy(torch.nn.Linear(2, 2), tok)  # type: ignore[arg-type]
    assert supports_prefix_reuse(model)
    model.generation_config.cache_implementation = "static"
    try:
        assert not supports_prefix_reuse(model)
    finally:
        model.generation_config.cache_implementation = None


def test_a_step_never_writes_past_the_models_context(tiny_policy_dir: Path) -> None:
    """max_new_tokens was the step cap alone: a search near the end of the context wrote
    past the model's positions (noise, or an IndexError on learned positions)."""
    pol = HFPolicy.from_pretrained(tiny_policy_dir)
    prefix = Trajectory(question="Start with 3. Add 4.")
    width = len(pol.encode(prefix))
    params = SamplingParams(temperature=1.0, max_step_tokens=60, seed=0)
    free = pol.generate([prefix], 1, params).steps[0][0]
    pol.context_length = width + 5
    capped = pol.generate([prefix], 1, params).steps[0][0]
    assert free.tokens > 5 and capped.tokens <= 5
    pol.context_length = width  # nothing left to write: an empty step, ended by length
    full = pol.generate([prefix], 1, params).steps[0][0]
    assert (full.text, full.finish_reason) == ("", "length")


def test_a_long_batch_mate_takes_no_room_from_a_short_prefix(tiny_policy_dir: Path) -> None:
    """Each row's room is its own: the room was the widest prompt's, so a prefix next to
    one near the end of the context got a cut or empty step (also a concurrent caller's,
    coalesced into the same generate). A prefix that fills the context writes nothing."""
    pol = HFPolicy.from_pretrained(tiny_policy_dir)
    short = Trajectory(question="Start with 3. Add 4.")
    long = Trajectory(question="Start with 3. Add 4.", steps=["3+4=7"] * 6)
    params = SamplingParams(temperature=1.0, max_step_tokens=40, seed=0, stop_at_step=False)
    alone = pol.generate([short], 1, params).steps[0][0]
    assert alone.tokens > 5  # a random model: it writes to the cap
    pol.context_length = len(pol.encode(long)) + 3
    for mates in ([short, long], [long, short]):
        steps = [row[0] for row in pol.generate(mates, 1, params).steps]
        got = dict(zip(map(id, mates), steps, strict=True))
        if mates[0] is short:  # seeds count from each prefix's place in its call
            assert got[id(short)] == alone
        assert got[id(long)].tokens <= 3 and got[id(long)].finish_reason == "length"
    pol.context_length = len(pol.encode(long))  # the long one fills it: only the short writes
    first, second = (row[0] for row in pol.generate([short, long], 1, params).steps)
    assert first == alone and (second.text, second.tokens) == ("", 0)


def test_a_checkpoint_of_another_kind_is_refused_not_filled_with_noise(
    tiny_policy_dir: Path, tmp_path: Path
) -> None:
    """transformers fills the weights a checkpoint lacks with random values and only logs
    it: a causal LM loaded as a Qwen-style PRM scored about 0.5 everywhere, and a PRM loaded
    as a policy wrote noise. A local path that does not exist is named as such."""
    from langchain_tts.prms.qwen import QwenPRM

    with pytest.raises(ConfigError, match=r"has no weights for score\..* not a checkpoint"):
        QwenPRM.from_pretrained(tiny_policy_dir)
    import shutil

    from transformers import LlamaConfig, LlamaForTokenClassification

    untied = tmp_path / "tokcls"  # a PRM whose embeddings are not its LM head
    cfg = LlamaConfig(vocab_size=len(AutoTokenizer.from_pretrained(tiny_policy_dir)),
                      hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_labels=2, tie_word_embeddings=False)  # fmt: skip
    LlamaForTokenClassification(cfg).save_pretrained(untied)
    for f in tiny_policy_dir.iterdir():
        if "token" in f.name:
            shutil.copy(f, untied / f.name)
    with pytest.raises(ConfigError, match=r"has no weights for lm_head\.weight"):
        HFPolicy.from_pretrained(untied)
    for cls in (HFPolicy, QwenPRM):
        with pytest.raises(ConfigError, match="no checkpoint at .*: the path does not exist"):
            cls.from_pretrained(tmp_path / "missing")


def test_special_token_text_in_a_question_or_step_stays_text(
    tiny_policy_dir: Path, prm: QwenPRM
) -> None:
    """A question (or a step) holding a special token's text was tokenized as that token:
    with a ChatML template, ``<|im_end|><|im_start|>system ...`` in a question forged turns.
    Now it tokenizes as the characters it shows, for the policy and the PRM alike, and the
    embedded runtime agrees with transformers."""
    from langchain_tts.backends.text import WORD_JOINER, plain_text
    from langchain_tts.models import load_default_policy

    pol = HFPolicy.from_pretrained(tiny_policy_dir)
    eos = pol.tokenizer.convert_tokens_to_ids(EOS)
    t = Trajectory(question=f"Start with 3.{EOS} Add 4.", steps=[f"3+4=7{EOS}"])
    assert eos not in pol.encode(t)
    assert eos not in prm.encode(t)
    assert plain_text(pol.tokenizer, f"a{EOS}b") == f"a<{WORD_JOINER}/s>b"
    assert plain_text(pol.tokenizer, "3+4=7") == "3+4=7"  # ordinary text is left alone
    native, hf = load_default_policy(), load_default_policy(backend="transformers")
    assert native.encode(t) == hf.encode(t) and eos not in native.encode(t)
