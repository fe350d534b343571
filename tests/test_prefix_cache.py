"""Policy prefix reuse: the KV cache, seeded samples with it on and off, the ledger's count."""

from __future__ import annotations

import pytest
import torch

from langchain_tts.backends.prefix_cache import PrefixCache
from langchain_tts.core.config import SamplingParams
from langchain_tts.core.types import Trajectory
from langchain_tts.graph import create_tts_graph
from langchain_tts.ledger import Ledger, MeteredPolicy
from langchain_tts.models import load_default_policy, load_default_prm
from langchain_tts.policies.hf import HFPolicy, delimiter_completers
from langchain_tts.scaling.flops import flops_without_cache


def _kv(tokens: int, value: float, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    t = torch.full((1, tokens, 4), value)
    return [(t, t + 1) for _ in range(layers)]


# -- the cache -------------------------------------------------------------------------------
def test_lookup_finds_the_longest_shared_prefix_across_siblings():
    cache = PrefixCache()
    prompt = list(range(40))
    root = cache.put(prompt, None, 0, _kv(40, 0.0))
    a = cache.put(prompt + [100, 101, 102], root, 40, _kv(3, 1.0))
    b = cache.put(prompt + [200, 201], root, 40, _kv(2, 2.0))
    assert len(cache) == 3
    # a child of sample a: shares 42 tokens with a, 40 with b
    entry, m = cache.lookup(prompt + [100, 101, 7, 8])
    assert (entry, m) == (a, 42)
    kv = entry.prefix_kv(m)
    assert kv[0][0].shape == (1, 42, 4)
    assert kv[0][0][0, :40].eq(0.0).all() and kv[0][0][0, 40:].eq(1.0).all()  # root + own
    assert cache.lookup(prompt + [200, 201, 5]) == (b, 42)
    assert cache.lookup(prompt + [200, 201, 5], max_len=41)[1] == 41
    entry, m = cache.lookup(prompt[:30] + [999] * 20)  # past a whole block, into the next
    assert m == 30 and entry in (root, a, b)
    assert cache.lookup([5] * 40) == (None, 0)


def test_eviction_by_size_keeps_recently_used_chains():
    per_token = 2 * 2 * 4 * 4  # keys + values, 2 layers, 4 floats of 4 bytes
    cache = PrefixCache(max_bytes=per_token * 55)
    root = cache.put(list(range(32)), None, 0, _kv(32, 0.0))
    a = cache.put(list(range(32)) + [1] * 10, root, 32, _kv(10, 1.0))
    assert cache.nbytes == per_token * 42
    cache.lookup(list(range(32)) + [1] * 10)  # refreshes a, then root: root outlives a
    cache.put(list(range(100, 120)), None, 0, _kv(20, 3.0))  # over the bound: a goes first
    assert cache.nbytes == per_token * 52 and cache.stats.evictions == 1
    assert cache.lookup(list(range(32)) + [1] * 10) == (root, 32)
    del a


def test_a_pinned_entry_outlives_eviction_and_clearing_until_unpinned():
    per_token = 2 * 2 * 4 * 4
    cache = PrefixCache(max_bytes=per_token * 40)
    prompt = list(range(32))
    root = cache.put(prompt, None, 0, _kv(32, 0.0))
    assert cache.pin(prompt + [7, 8], max_len=33) == (root, 32)
    cache.put(list(range(100, 120)), None, 0, _kv(20, 3.0))  # over the bound: root is pinned
    assert cache.lookup(prompt + [7]) == (root, 32) and cache.stats.evictions == 0
    cache.clear()  # a call in flight was credited root: only the rest goes
    assert len(cache) == 1 and cache.lookup(prompt) == (root, 32)
    cache.put(list(range(100, 120)), None, 0, _kv(20, 3.0))
    cache.unpin(root)  # over the bound again: the least recently used unpinned entry goes
    assert cache.lookup(prompt) == (None, 0) and cache.stats.evictions == 1
    assert cache.pin([5] * 20) == (None, 0)  # a miss pins nothing


# -- the embedded policy ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def policies() -> tuple[HFPolicy, HFPolicy]:
    on = load_default_policy()
    off = HFPolicy(on.model, on.tokenizer, prefix_cache=False)
    assert on.prefix_cache is not None and off.prefix_cache is None
    return on, off


def test_two_step_beam_by_hand(policies):
    """Step 1 prefills the question once for its 4 samples; step 2's beams prefill only the
    one token their parent's cached row lacks (its last sampled token was never fed)."""
    on, _ = policies
    on.prefix_cache.clear()
    params = SamplingParams(temperature=0.8, seed=3, max_step_tokens=48)
    root = Trajectory(question="What is 17 + 25?")
    first = on.generate([root], n=4, params=params)
    length = len(on.encode(root))
    u = first.usage
    assert (u.policy_prompt_tokens, u.policy_cached_tokens) == (length, 3 * length)
    generated = sum(s.tokens for s in first.steps[0])
    assert u.policy_generated_tokens == generated
    assert u.policy_flops == 2.0 * on.num_parameters * (length + generated)

    beams = [root.extend(s) for s in first.steps[0][:3]]
    assert all(s.finish_reason == "step" for s in first.steps[0][:3])
    lengths = [len(on.encode(b)) for b in beams]
    # char-level tokens: a child's prompt is its parent's prompt + the step's tokens
    assert lengths == [length + s.tokens for s in first.steps[0][:3]]
    second = on.generate(beams, n=4, params=params)
    u = second.usage
    distinct = len({b.text for b in beams})  # two equal beams are one prompt
    assert u.policy_prompt_tokens == distinct  # one computed token per distinct beam
    assert u.policy_cached_tokens == 4 * sum(lengths) - distinct
    generated = sum(s.tokens for row in second.steps for s in row)
    assert u.policy_flops == 2.0 * on.num_parameters * (distinct + generated)
    total = first.usage + second.usage
    without = flops_without_cache(total, policy_params=on.num_parameters)
    read = 4 * length + 4 * sum(lengths)  # every prompt token of both calls
    assert without == 2.0 * on.num_parameters * (read + total.policy_generated_tokens)


@pytest.mark.parametrize(
    "strategy,cfg",
    [("beam_search", {"n": 8, "beam_width": 2}), ("best_of_n", {"n": 8})],
)
def test_seeded_runs_are_the_same_with_the_cache_on_and_off(policies, strategy, cfg):
    on, off = policies
    prm = load_default_prm()
    questions = ["What is 17 + 25?", "Start with 9. Multiply by 3, then subtract 4."]
    outs = {}
    for name, policy in (("on", on), ("off", off)):
        graph = create_tts_graph(policy, prm, strategy, {**cfg, "seed": 7, "max_steps": 6})
        outs[name] = [graph.invoke({"question": q}) for q in questions]
    for a, b in zip(outs["on"], outs["off"], strict=True):
        assert [c.steps for c in a["candidates"]] == [c.steps for c in b["candidates"]]
        assert a["answer"] == b["answer"]
        ua, ub = a["usage"], b["usage"]
        # the same prompt tokens read; with the cache most of them are not computed
        assert ua.policy_generated_tokens == ub.policy_generated_tokens
        assert ua.policy_prompt_tokens + ua.policy_cached_tokens == ub.policy_prompt_tokens
        assert ub.policy_cached_tokens == 0 and ua.policy_cached_tokens > 0
        assert ua.policy_flops < ub.policy_flops


def test_the_ledger_reserves_what_a_cached_call_can_compute(policies):
    on, off = policies
    prefixes = [Trajectory(question="What is 2 + 3?")] * 2
    params = SamplingParams(temperature=0.8)
    length = len(on.encode(prefixes[0]))
    assert off.prompt_tokens_bound(prefixes, 4, params) == 8 * length
    # one prefill per chunk the 8 copies can span (a merged batch may split them in two)
    assert on.prompt_tokens_bound(prefixes, 4, params) == 2 * length
    greedy = SamplingParams(temperature=0.0)
    assert off.prompt_tokens_bound(prefixes, 4, greedy) == 2 * length


def test_the_transformers_backend_reuses_past_key_values_with_the_same_samples():
    on = load_default_policy(backend="transformers")
    off = HFPolicy(on.model, on.tokenizer, prefix_cache=False)
    assert on.prefix_cache is not None
    # its hits are not credited call by call, so budgets price every re-read
    assert not on.reuses_prefixes and load_default_policy().reuses_prefixes
    params = SamplingParams(temperature=0.8, seed=3, max_step_tokens=48)
    roots = [Trajectory(question="What is 17 + 25?"), Trajectory(question="Start with 9.")]
    first = on.generate(roots, n=4, params=params)
    assert first.steps == off.generate(roots, n=4, params=params).steps
    beams = [roots[0].extend(first.steps[0][0]), roots[1].extend(first.steps[1][1])]
    a, b = on.generate(beams, n=4, params=params), off.generate(beams, n=4, params=params)
    assert a.steps == b.steps
    read = 4 * sum(len(on.encode(t)) for t in beams)
    assert b.usage.policy_prompt_tokens == read and b.usage.policy_cached_tokens == 0
    assert a.usage.policy_prompt_tokens + a.usage.policy_cached_tokens == read
    assert a.usage.policy_cached_tokens > read // 2  # each row computes past the cut only
    assert a.usage.policy_flops < b.usage.policy_flops


def test_the_stop_check_decodes_only_rows_that_can_complete_the_delimiter(policies):
    """Rows whose newest token cannot end the delimiter are not decoded; the steps are
    the same as when every row is decoded at every token."""
    _, off = policies
    slow = HFPolicy(off.model, off.tokenizer, prefix_cache=False)
    slow._completers = (None,)  # decode every row, as without the filter
    mask = delimiter_completers(off.tokenizer, "\n\n")
    assert mask is not None and mask[off.tokenizer.encode("\n", add_special_tokens=False)].all()
    assert not mask[off.tokenizer.encode("7", add_special_tokens=False)].any()
    assert delimiter_completers(off.tokenizer, "end ") is None  # a space: no filter
    params = SamplingParams(temperature=0.8, seed=5, max_step_tokens=48)
    roots = [Trajectory(question="What is 17 + 25?"), Trajectory(question="Start with 9.")]
    assert off.generate(roots, n=8, params=params).steps == slow.generate(roots, 8, params).steps


def test_a_metered_policy_reserves_the_tokenized_bound_and_books_computed_tokens(policies):
    on, _ = policies
    on.prefix_cache.clear()
    ledger = Ledger(max_tokens=10_000)
    metered = MeteredPolicy(on, ledger)
    root = Trajectory(question="What is 2 + 3?")
    params = SamplingParams(temperature=0.8, seed=1, max_step_tokens=32)
    length = len(on.encode(root))
    assert metered.prompt_bound([root], 4, params) == 2 * length  # not 4 x (bytes + 64)
    first = metered.generate([root], 4, params)
    beams = [root.extend(s) for s in first.steps[0][:2]]
    second = metered.generate(beams, 4, params)
    spent = ledger.spent
    assert spent.policy_prompt_tokens == length + len({b.text for b in beams})
    assert spent.policy_prompt_tokens == (first.usage + second.usage).policy_prompt_tokens
    assert spent.tokens == spent.policy_prompt_tokens + spent.policy_generated_tokens
    assert ledger.left()[1] == 10_000 - spent.tokens  # the reservations were released


def test_a_metered_call_is_credited_the_prompt_its_cache_holds(policies):
    """The next step of a search reserves only the tokens past its cached prefix (that entry
    pinned until the call is done), and computes no more than that."""
    on, _ = policies
    on.prefix_cache.clear()
    root = Trajectory(question="Start with 27. Multiply by 5. Multiply by 3. Add 28.")
    params = SamplingParams(temperature=0.8, seed=1, max_step_tokens=32)
    first = on.generate([root], 2, params)
    child = root.extend(first.steps[0][0])
    full = on.prompt_tokens_bound([child], 2, params)
    bound, release = on.lease_prompt_tokens([child], 2, params)
    pinned = [e for e in on.prefix_cache._entries.values() if e.pins]
    assert bound is not None and bound < full // 2 and len(pinned) == 1
    release()
    assert not any(e.pins for e in on.prefix_cache._entries.values())
    ledger = Ledger(max_tokens=bound + 2 * 32)  # the credited prompt and the samples' cap
    out = MeteredPolicy(on, ledger).generate([child], 2, params)
    assert not ledger.exhausted and ledger.spent.policy_prompt_tokens <= bound
    assert all(s.text for s in out.steps[0]) and ledger.spent == out.usage
    assert not any(e.pins for e in on.prefix_cache._entries.values())  # released
    # cold, the same budget cannot pay for the whole prompt
    on.prefix_cache.clear()
    cold = Ledger(max_tokens=bound + 2 * 32)
    MeteredPolicy(on, cold).generate([child], 2, params)
    assert cold.exhausted or cold.cut


@pytest.mark.slow
@pytest.mark.parametrize("cache_mb", [256.0, 0.25])  # roomy, and evicting all the time
async def test_concurrent_budgeted_searches_on_warm_caches_never_overspend(cache_mb: float):
    """Cache credit is only safe if what was credited is still there when the call runs:
    concurrent searches under budgets, on warm caches and on ones too small to keep much
    (the policy's and the verifier's), each stay within their budget."""
    import asyncio

    from langchain_tts import ConfigError, load_default

    base, prm = load_default()
    policy = HFPolicy(base.model, base.tokenizer, prefix_cache_mb=cache_mb)
    if cache_mb < 1:
        prm.cache_tokens = 256  # the verifier's cache evicting all the time too
    questions = [
        "Start with 27. Multiply by 5. Multiply by 3. Divide by 5. Multiply by 4. Add 28.",
        "Start with 150. Add 9. Multiply by 2. Subtract 18.",
    ]
    runs = []
    configs = {
        "beam_search": {"n": 4},
        "dvts": {"n": 4, "beam_width": 2},
        "particle_filtering": {"n": 4},
        "step_repair": {"n": 4},
        "mcts": {"simulations": 4},
        "best_of_n": {"n": 4},
        "revision": {"revise": "backtrack", "revisions": 2},
    }
    for k, (strategy, knobs) in enumerate(configs.items()):
        graph = create_tts_graph(policy, prm, strategy, {"seed": k, **knobs})
        for q in questions:
            await graph.ainvoke({"question": q})  # warm the cache
            for budget in (2.5e8, 7e8):  # cut early, and late
                runs.append((graph, q, budget))

    async def run(graph, q, budget):
        try:
            out = await graph.ainvoke({"question": q}, {"configurable": {"max_flops": budget}})
        except ConfigError:  # its prompt evicted, the first call cannot be paid: nothing ran
            return None, budget
        return out["usage"].flops, budget

    spent = await asyncio.gather(*(run(*r) for r in runs))
    assert all(s is None or s <= b for s, b in spent)
    assert sum(s is not None for s, _ in spent) >= len(runs) // 2
    assert not any(e.pins for e in policy.prefix_cache._entries.values())
    assert not any(e.pins for e in prm.prefix_cache()._entries.values())
