"""PRM-side reuse: incremental scoring through the prefix cache, and dedupe before scoring."""

from __future__ import annotations

import pytest

from langchain_tts.core.types import Trajectory
from langchain_tts.models import load_default_prm
from langchain_tts.strategies.core import score
from langchain_tts.testing import FakePRM

Q = "Start with 21. Subtract 16. Multiply by 3."  # the embedded models' task
STEPS = ["21-16=5", "5*3=15", "\\boxed{15}"]
WRONG = ["21-16=6", "6*3=18"]


def _calls() -> list[list[Trajectory]]:
    """The PRM calls of a small search: roots' children, then their children, then a
    repeat, a second question and a branch that leaves the first path."""
    t = lambda steps, q=Q: Trajectory(question=q, steps=steps)  # noqa: E731
    return [
        [t(STEPS[:1]), t(WRONG[:1])],
        [t(STEPS[:2]), t(WRONG[:2]), t([STEPS[0], "5*3=16"])],
        [t(STEPS), t(STEPS[:2]), t(["9+36=45"], "Start with 9. Add 36.")],
    ]


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.fixture(scope="module", params=["calculator", "strong", "weak", "likelihood"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def test_scores_are_the_same_with_the_cache_on_and_off(kind: str) -> None:
    on, off = load_default_prm(kind), load_default_prm(kind)
    off.cache_tokens = 0
    assert off.prefix_cache() is None and on.prefix_cache() is not None
    computed = cached = total = 0
    for call in _calls():
        a, b = on.score(call), off.score(call)
        for row_on, row_off in zip(a.scores, b.scores, strict=True):
            assert row_on == pytest.approx(row_off, abs=1e-5)
        # every token is either computed or read, and only computed ones cost FLOPs
        assert a.usage.prm_tokens + a.usage.prm_cached_tokens == b.usage.prm_tokens
        assert a.usage.prm_flops == 2.0 * on.num_parameters * a.usage.prm_tokens
        assert b.usage.prm_cached_tokens == 0
        computed += a.usage.prm_tokens
        cached += a.usage.prm_cached_tokens
        total += b.usage.prm_tokens
    assert cached > 0 and computed < 0.7 * total


def test_the_transformers_backend_scores_incrementally_and_agrees(kind: str) -> None:
    """The same weights through transformers score incrementally too (a transformers body
    on a ``DynamicCache``, the model's own read-out), and equal the native runtime's."""
    native, hf = load_default_prm(kind), load_default_prm(kind, backend="transformers")
    plain = load_default_prm(kind, backend="transformers")
    plain.cache_tokens = 0
    assert hf.prefix_cache() is not None
    cached = 0
    for call in _calls():
        a, b, c = native.score(call), hf.score(call), plain.score(call)
        for row_native, row_hf in zip(a.scores, b.scores, strict=True):
            assert row_native == pytest.approx(row_hf, abs=1e-5)
        assert b.usage.prm_tokens + b.usage.prm_cached_tokens == c.usage.prm_tokens
        assert b.usage.prm_flops == 2.0 * hf.num_parameters * b.usage.prm_tokens
        cached += b.usage.prm_cached_tokens
    assert cached > 0
    assert hf._incremental_ok is True  # checked once against a plain forward, and kept


def _forward_ignoring_the_cache(module):
    """A body whose forward takes a cache and drops it (as some remote code does)."""
    original = module.forward

    def forward(input_ids=None, attention_mask=None, position_ids=None, cache=None,
                use_cache=None, **kw):  # fmt: skip
        return original(
            input_ids=input_ids, attention_mask=attention_mask[:, -input_ids.shape[1] :]
        )

    module.forward = forward


def test_a_transformers_forward_that_drops_the_cache_falls_back_to_every_token() -> None:
    hf, plain = (load_default_prm("weak", backend="transformers") for _ in range(2))
    plain.cache_tokens = 0
    _forward_ignoring_the_cache(hf.model.base_model)
    calls = _calls()
    with pytest.warns(RuntimeWarning, match="computes every token"):
        for call in calls[:2]:
            hf.score(call)
    assert hf.prefix_cache() is None and hf._incremental_ok is False
    a, b = hf.score(calls[2]), plain.score(calls[2])
    assert a.scores == b.scores and a.usage.prm_cached_tokens == 0


def test_a_transformers_forward_that_fails_with_a_cache_falls_back_to_every_token() -> None:
    """Remote code written for another transformers version may raise when handed a cache:
    before its cached scores were ever checked, that only turns the cache off."""
    hf, plain = (load_default_prm("weak", backend="transformers") for _ in range(2))
    plain.cache_tokens = 0
    body = hf.model.base_model
    original = body.forward

    def forward(input_ids=None, attention_mask=None, position_ids=None, cache=None, **kw):
        if cache is not None and cache.get_seq_length():
            raise TypeError("this forward predates DynamicCache")
        return original(input_ids=input_ids, attention_mask=attention_mask,
                        position_ids=position_ids, cache=cache, **kw)  # fmt: skip

    body.forward = forward
    call = _calls()[1]
    with pytest.warns(RuntimeWarning, match="TypeError: this forward predates"):
        got = hf.score(call)
    assert got.scores == plain.score(call).scores and hf._incremental_ok is False


def test_a_read_out_that_differs_from_the_forward_is_caught_once() -> None:
    """Cached scores are compared with a plain forward the first time they are used; a
    mismatch (here a read-out that is not what the model's forward does) turns the cache off
    and returns the plain forward's scores."""
    hf, plain = (load_default_prm("weak", backend="transformers") for _ in range(2))
    plain.cache_tokens = 0
    score = hf.model.score
    hf._head = lambda: lambda hidden, _i, _m: score(hidden) * 0.2  # type: ignore[method-assign]
    first = [Trajectory(question=Q, steps=STEPS[:1])]
    hf.score(first)  # nothing read from the cache yet: nothing to check
    assert hf._incremental_ok is None
    call = _calls()[1]
    with pytest.warns(RuntimeWarning, match="differ from a plain forward"):
        got = hf.score(call)
    want = plain.score(call)
    assert got.scores == want.scores and got.usage.prm_cached_tokens == 0
    assert hf.prefix_cache() is None
    assert hf.score(call).scores == want.scores  # and stays off, without another warning


def test_a_child_computes_only_its_new_step() -> None:
    """Hand count: the child's tokens past the longest prefix it shares with its parent."""
    prm = load_default_prm("strong")
    parent = Trajectory(question=Q, steps=STEPS[:1])
    child = Trajectory(question=Q, steps=STEPS[:2])
    p_ids, c_ids = prm.encode(parent), prm.encode(child)
    shared = _common(p_ids, c_ids)
    first = prm.score([parent])
    assert (first.usage.prm_tokens, first.usage.prm_cached_tokens) == (len(p_ids), 0)
    second = prm.score([child])
    assert second.usage.prm_cached_tokens == shared
    assert second.usage.prm_tokens == len(c_ids) - shared
    again = prm.score([child])  # scored before: nothing to compute
    assert (again.usage.prm_tokens, again.usage.prm_cached_tokens) == (0, len(c_ids))


def test_siblings_compute_their_shared_prefix_once() -> None:
    prm = load_default_prm("strong")
    a = Trajectory(question=Q, steps=STEPS[:1])
    b = Trajectory(question=Q, steps=WRONG[:1])
    ids_a, ids_b = prm.encode(a), prm.encode(b)
    shared = _common(ids_a, ids_b)
    got = prm.score([a, b])
    assert got.usage.prm_tokens == len(ids_a) + len(ids_b) - shared
    assert got.usage.prm_cached_tokens == shared


def test_concurrent_questions_compute_each_head_once() -> None:
    prm, off = load_default_prm("strong"), load_default_prm("strong")
    off.cache_tokens = 0
    q2 = "Start with 9. Add 36."
    trajs = [
        Trajectory(question=Q, steps=STEPS[:1]),
        Trajectory(question=q2, steps=["9+36=45"]),
        Trajectory(question=Q, steps=WRONG[:1]),
        Trajectory(question=q2, steps=["9+36=44"]),
    ]
    ids = [prm.encode(t) for t in trajs]
    # the least there is to compute: every distinct prefix once (the system prompt, each
    # question's head, each step), as the nodes of a trie of the four sequences
    trie = {tuple(s[:k]) for s in ids for k in range(1, len(s) + 1)}
    got = prm.score(trajs)
    assert got.usage.prm_tokens == len(trie)
    assert got.usage.prm_cached_tokens == sum(map(len, ids)) - len(trie)
    for row, ref in zip(got.scores, off.score(trajs).scores, strict=True):
        assert row == pytest.approx(ref, abs=1e-5)


def test_the_cache_holds_at_most_cache_tokens() -> None:
    prm = load_default_prm("calculator")
    prm.cache_tokens = 40
    for call in _calls():
        prm.score(call)
        cache = prm.prefix_cache()
        assert cache is not None and 0 < cache.tokens <= 40


async def test_prefix_cache_finds_prefixes_inside_a_sequence_and_forgets_the_oldest() -> None:
    import torch

    from langchain_tts.backends.scoring_cache import ScoringCache

    def kv(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1, 2, 1, n, 2), torch.arange(n, dtype=torch.float)[:, None]

    cache = ScoringCache(max_tokens=8)
    cache.add([1, 2, 3, 4, 5], *kv(5))
    n, entry = cache.lookup([1, 2, 3, 9])  # a prefix that ends inside the cached sequence
    assert n == 3 and entry is not None and entry.hidden[:n, 0].tolist() == [0, 1, 2]
    assert cache.lookup([7, 1, 2]) == (0, None)
    cache.add([6, 7, 8], *kv(3))
    assert cache.tokens == 8 and len(cache) == 2
    cache.lookup([1, 2])  # used: the other one is now the oldest
    cache.add([9, 9], *kv(2))
    assert cache.lookup([6, 7])[0] == 0 and cache.lookup([1, 2, 3])[0] == 3
    assert cache.tokens == 7 and len(cache) == 2


def test_a_pinned_sequence_is_kept_and_its_prefixes_stay_found() -> None:
    import torch

    from langchain_tts.backends.scoring_cache import ScoringCache

    def kv(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1, 2, 1, n, 2), torch.zeros(n, 1)

    cache = ScoringCache(max_tokens=8)
    cache.add([1, 2, 3, 4], *kv(4))
    assert cache.pin([1, 2, 3, 9])[0] == 3
    cache.add([1, 2, 3, 5], *kv(4))  # the newest holds the shared prefix [1, 2, 3]
    cache.add([6, 6, 6], *kv(3))  # over the bound: [1, 2, 3, 5] goes, the pinned one stays
    assert cache.lookup([1, 2, 3, 9])[0] == 3  # still found, through the pinned sequence
    assert cache.lookup([1, 2, 3, 5])[0] == 3 and cache.tokens == 7
    cache.clear()  # keeps what a call in flight was credited
    assert len(cache) == 1 and cache.lookup([1, 2, 3, 4])[0] == 4
    _, entry = cache.lookup([1, 2, 3, 4])
    assert entry is not None
    cache.add([7, 7, 7, 7, 7], *kv(5))  # over the bound: the pinned one stays, this goes
    assert cache.lookup([7, 7]) == (0, None) and cache.tokens == 4
    cache.unpin(entry)
    cache.add([7, 7, 7, 7, 7], *kv(5))  # now the pinned one was the oldest: it goes
    assert cache.lookup([1, 2, 3, 4]) == (0, None) and cache.tokens == 5


@pytest.mark.parametrize("kind", ["calculator", "strong"])
def test_a_metered_call_is_credited_what_the_prm_cache_holds(kind: str) -> None:
    """A child's PRM call reserves its tokens past the cached parent (pinned meanwhile) and
    computes no more than that."""
    from langchain_tts.ledger import Ledger, MeteredPRM

    prm = load_default_prm(kind)
    parent = Trajectory(question=Q, steps=STEPS[:1])
    children = [Trajectory(question=Q, steps=STEPS[:2]), Trajectory(question=Q, steps=WRONG[:2])]
    prm.score([parent])
    full = prm.tokens_bound(children)
    bound, release = prm.lease_tokens(children)
    assert full is not None and bound is not None and bound < full
    release()
    ledger = Ledger(max_tokens=bound)  # exactly the credited bound
    got = MeteredPRM(prm, ledger).score(children)
    assert not ledger.exhausted and 0 < got.usage.prm_tokens <= bound
    cache = prm.prefix_cache()
    assert cache is not None and not any(e.pins for e in cache._entries.values())
    prm.clear_cache()  # cold, that budget cannot pay for the whole inputs
    cold = Ledger(max_tokens=bound)
    assert MeteredPRM(prm, cold).score(children).scores == [[0.0, 0.0], [0.0, 0.0]]
    assert cold.exhausted


def test_a_transformers_prm_is_credited_its_cache_only_once_checked() -> None:
    from langchain_tts.ledger import Ledger, MeteredPRM

    prm = load_default_prm("strong", backend="transformers")
    parent = Trajectory(question=Q, steps=STEPS[:1])
    child = Trajectory(question=Q, steps=STEPS[:2])
    prm.score([parent])
    assert not prm.reuses_prefixes  # its cached scores are not checked yet: no credit
    assert prm.lease_tokens([child])[0] == prm.tokens_bound([child])
    prm.score([child])  # the first cached scores: checked against a plain forward
    assert prm.reuses_prefixes
    full = Trajectory(question=Q, steps=STEPS)
    bound, release = prm.lease_tokens([full])
    release()
    assert bound is not None and bound < len(prm.encode(full))
    ledger = Ledger(max_tokens=bound)
    got = MeteredPRM(prm, ledger).score([full])
    assert not ledger.exhausted and 0 < got.usage.prm_tokens <= bound


def test_what_a_lease_credited_survives_other_calls_filling_the_cache() -> None:
    prm = load_default_prm("strong")
    prm.cache_tokens = 160  # the parent and little else
    parent = Trajectory(question=Q, steps=STEPS[:1])
    child = Trajectory(question=Q, steps=STEPS[:2])
    prm.score([parent])
    bound, release = prm.lease_tokens([child])
    assert bound is not None and bound < len(prm.encode(child))
    others = [Trajectory(question=f"Start with {k}. Add 36.", steps=[f"{k}+36={k + 36}"])
              for k in range(10, 14)]  # fmt: skip
    prm.score(others)  # a concurrent call's inputs push the cache over its bound
    assert prm.score([child]).usage.prm_tokens <= bound  # the parent was still there
    release()


async def test_identical_candidates_are_scored_once() -> None:
    seen: list[tuple[str, ...]] = []

    def fn(t: Trajectory) -> list[float]:
        seen.append(tuple(t.steps))
        return [1.0 / (1 + len(s) + len(t.question)) for s in t.steps]

    prm = FakePRM(fn)
    same = Trajectory(question=Q, steps=STEPS[:2])
    other_question = Trajectory(question="another", steps=STEPS[:2])
    trajs = [same, Trajectory(question=Q, steps=WRONG), same.copy_with(), other_question]
    scored, usage = await score(prm, trajs)
    assert prm.calls == [3] and usage.prm_calls == 1  # the copy of `same` is not sent again
    assert scored[2].step_scores == scored[0].step_scores == fn(same)
    assert scored[3].step_scores == fn(other_question)
    assert [t.steps for t in scored] == [t.steps for t in trajs]
    scored[0].step_scores[0] = -1.0  # duplicates never share one list
    assert scored[2].step_scores[0] != -1.0
    kids = [same.copy_with(), same.copy_with()]
    in_place, _ = await score(prm, kids, in_place=True)
    assert in_place[0] is kids[0] and kids[0].step_scores == kids[1].step_scores
    assert kids[0].step_scores is not kids[1].step_scores and prm.calls[-1] == 1


@pytest.mark.slow
def test_a_search_on_the_transformers_backend_matches_the_native_one() -> None:
    """Beam search with policy and verifier both loaded through transformers: the same
    seeded answers and PRM work as on the native runtime, the children's prefixes read from
    the verifier's cache."""
    from langchain_tts.graph import create_tts_graph
    from langchain_tts.models import load_default

    questions = ["Start with 21. Subtract 16. Multiply by 3. Add 14. Subtract 20.", Q]
    cfg = {"n": 8, "beam_width": 4, "seed": 0}
    runs = {}
    for backend in ("native", "transformers"):
        graph = create_tts_graph(*load_default(backend=backend), "beam_search", cfg)
        runs[backend] = [graph.invoke({"question": q}) for q in questions]
    for native, hf in zip(runs["native"], runs["transformers"], strict=True):
        assert hf["answer"] == native["answer"] and hf["solution"] == native["solution"]
        u, v = hf["usage"], native["usage"]
        assert u.prm_cached_tokens > 0
        assert u.prm_tokens + u.prm_cached_tokens == v.prm_tokens + v.prm_cached_tokens


@pytest.mark.parametrize("window", [4096, 16])
def test_a_sliding_window_model_reuses_what_its_window_keeps(window: int) -> None:
    """Mistral-style layers (Math-Shepherd's body) keep only their last ``window - 1`` keys:
    sequences shorter than that are scored incrementally, longer ones computed whole, with
    the same scores either way and no warning."""
    import warnings

    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from langchain_tts.models.tokenizer import build_tokenizer
    from langchain_tts.prms.likelihood import LikelihoodPRM

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                        sliding_window=window, max_position_embeddings=512)  # fmt: skip
    model = MistralForCausalLM(cfg).eval()
    on, off = LikelihoodPRM(model, tok), LikelihoodPRM(model, tok)
    off.cache_tokens = 0
    assert on.prefix_cache() is not None
    cached = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for call in _calls():
            a, b = on.score(call), off.score(call)
            for got, want in zip(a.scores, b.scores, strict=True):
                assert got == pytest.approx(want, abs=1e-5)
            cached += a.usage.prm_cached_tokens
    assert (cached > 0) is (window > 100)


@pytest.mark.parametrize("backend", ["native", "transformers"])
def test_an_input_past_the_prms_context_is_an_input_error_for_its_caller_only(backend: str):
    """Past its positions a PRM scored noise (native RoPE), failed with an IndexError
    (learned positions) or allocated for a 100k-character step; now the caller gets an
    InputError, and a caller merged into the same forward still gets its own scores."""
    import asyncio

    from langchain_tts.core.errors import InputError

    prm = load_default_prm("strong", backend=backend)
    q = "Start with 14. Add 9. Multiply by 3."
    ok = Trajectory(question=q, steps=["14+9=23", "23*3=69"])
    long = Trajectory(question=q, steps=["14+9=23"] * 180)
    alone = prm.score([ok]).scores
    with pytest.raises(InputError, match=r"over the PRM's context of 512 tokens"):
        prm.score([long])
    with pytest.raises(InputError, match="over the PRM's context"):
        prm.invoke({"question": q, "steps": ["1" * 100_000]})

    async def both():
        return await asyncio.gather(prm.ascore([ok]), prm.ascore([long]), return_exceptions=True)

    mine, theirs = asyncio.run(both())
    assert isinstance(theirs, InputError) and mine.scores == alone
    with pytest.raises(InputError, match="step 1 is not valid Unicode"):
        prm.invoke({"question": q, "steps": ["14+9=23", "23*3=\ud800"]})
