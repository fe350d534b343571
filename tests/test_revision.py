"""Sequential revision and the hybrid parallel x sequential strategy."""

from __future__ import annotations

import re

import pytest

from langchain_tts import ConfigError, create_tts_graph
from langchain_tts.core.types import Trajectory
from langchain_tts.strategies.hybrid import HybridConfig, sqrt_split
from langchain_tts.strategies.revision import DEFAULT_REVISION_TEMPLATE, render_revision_prompt
from langchain_tts.testing import FakePolicy, FakePRM

ATTEMPT = re.compile(r"chain (\d+) try (\d+)")


def chain_policy(prompts: list[str] | None = None) -> FakePolicy:
    """Round 0: sample i writes chain i's first attempt; a revision continues the chain
    named in the previous attempt (which it reads from the prompt)."""

    def step(p: Trajectory, i: int) -> str:
        if prompts is not None:
            prompts.append(p.question)
        m = ATTEMPT.search(p.question)
        chain, r = (int(m.group(1)), int(m.group(2)) + 1) if m else (i, 0)
        return f"chain {chain} try {r}\n\n\\boxed{{{10 * chain + r}}}"

    return FakePolicy(step)


def table_prm(table: dict[tuple[int, int], float], seen: list[str] | None = None) -> FakePRM:
    """Score of (chain, round) from ``table`` (0.1 when missing), on every step."""

    def fn(t: Trajectory) -> list[float]:
        if seen is not None:
            seen.append(t.question)
        m = ATTEMPT.search(t.text)
        s = table.get((int(m.group(1)), int(m.group(2))), 0.1)
        return [s] * len(t.steps)

    return FakePRM(fn)


# -- revision ---------------------------------------------------------------------------


def test_revises_previous_attempt_and_scores_against_the_question():
    prompts, seen = [], []
    policy, prm = chain_policy(prompts), table_prm({}, seen)
    g = create_tts_graph(policy, prm, "revision", {"revisions": 2})
    updates = list(g.stream({"question": "Q?"}, stream_mode="updates"))
    assert [next(iter(u)) for u in updates] == ["prepare", "round", "round", "round", "finalize"]
    first = "chain 0 try 0\n\n\\boxed{0}"
    second = "chain 0 try 1\n\n\\boxed{1}"
    doubt = "The verifier doubts step 1 (score 0.10): chain 0 try"
    assert prompts == [
        "Q?",
        f"Q?\n\nPrevious attempt:\n{first}\n\n{doubt} 0\n\nRevise the solution.",
        f"Q?\n\nPrevious attempt:\n{second}\n\n{doubt} 1\n\nRevise the solution.",
    ]
    assert seen == ["Q?"] * 3  # the PRM judges against the original question
    assert [c[:2] for c in policy.calls] == [(1, 1)] * 3
    assert all(not c[2].stop_at_step for c in policy.calls)  # whole solutions
    assert prm.calls == [1, 1, 1]


def test_stops_early_when_the_verifier_is_confident():
    policy = chain_policy()
    prm = table_prm({(0, 0): 0.3, (0, 1): 0.5, (0, 2): 0.95, (0, 3): 0.99})
    g = create_tts_graph(policy, prm, "revision", {"revisions": 5, "stop_threshold": 0.9})
    out = g.invoke({"question": "q"})
    assert len(policy.calls) == 3 and len(prm.calls) == 3
    assert out["stop_reason"] == "confident"
    assert out["answer"] == "2"
    # A confident first attempt is never revised; no threshold: every round runs.
    prm = table_prm({(0, 0): 0.95})
    policy = chain_policy()
    out = create_tts_graph(policy, prm, "revision").invoke({"question": "q"})
    assert len(policy.calls) == 1 and out["answer"] == "0"
    policy = chain_policy()
    cfg = {"revisions": 5, "stop_threshold": None}
    out = create_tts_graph(policy, prm, "revision", cfg).invoke({"question": "q"})
    assert len(policy.calls) == 6 and out["stop_reason"] == "max_revisions"


def test_final_answer_is_the_best_attempt_not_the_last():
    prm = table_prm({(0, 0): 0.2, (0, 1): 0.8, (0, 2): 0.4})
    out = create_tts_graph(chain_policy(), prm, "revision", {"revisions": 2}).invoke(
        {"question": "q"}
    )
    assert out["answer"] == "1"
    assert out["stop_reason"] == "max_revisions"
    assert [c.score for c in out["candidates"]] == pytest.approx([0.8, 0.4, 0.2])
    u = out["usage"]
    assert u.policy_calls == 3 and u.prm_calls == 3 and u.flops > 0


def test_custom_template_with_braces_and_bad_templates():
    prompts: list[str] = []
    tpl = "Fix this (answer in \\boxed{}): {attempt}\nProblem: {question}"
    cfg = {"revisions": 1, "revision_template": tpl}
    create_tts_graph(chain_policy(prompts), table_prm({}), "revision", cfg).invoke(
        {"question": "q"}
    )
    assert prompts[1] == "Fix this (answer in \\boxed{}): chain 0 try 0\n\n\\boxed{0}\nProblem: q"
    # without feedback (no PRM, or an unscored attempt) the default leaves no empty paragraph
    assert render_revision_prompt(DEFAULT_REVISION_TEMPLATE, "{attempt}", "x") == (
        "{attempt}\n\nPrevious attempt:\nx\n\nRevise the solution."
    )
    assert render_revision_prompt(DEFAULT_REVISION_TEMPLATE, "q", "x", "f") == (
        "q\n\nPrevious attempt:\nx\n\nf\n\nRevise the solution."
    )
    for bad in ("Revise: {question}", "{attempt} again", "no fields"):
        with pytest.raises(ConfigError, match="revision_template must contain"):
            create_tts_graph(chain_policy(), table_prm({}), "revision", {"revision_template": bad})


def test_many_rounds_survive_small_recursion_limit_and_messages_input():
    policy = chain_policy()
    g = create_tts_graph(policy, table_prm({}), "revision", {"revisions": 30})
    out = g.invoke({"messages": [("human", "q")]}, {"recursion_limit": 5})
    assert len(policy.calls) == 31 and out["stop_reason"] == "max_revisions"
    assert out["messages"][-1].type == "ai" and "boxed" in out["messages"][-1].content


def test_without_prm_only_majority():
    with pytest.raises(ConfigError, match="needs a PRM"):
        create_tts_graph(chain_policy(), None, "revision")
    policy = FakePolicy(lambda p, i: "\\boxed{4}" if "Previous" in p.question else "\\boxed{3}")
    cfg = {"selection": "majority", "revisions": 2}
    out = create_tts_graph(policy, None, "revision", cfg).invoke({"question": "q"})
    assert out["answer"] == "4" and len(policy.calls) == 3


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"revisions": -1}, "revisions"),
        ({"stop_threshold": 1.5}, "stop_threshold"),
        ({"top_p": 0}, "top_p"),
        ({"chains": 2}, "chains"),  # a hybrid knob
    ],
)
def test_bad_revision_config(cfg: dict, field: str):
    with pytest.raises(ConfigError, match=field):
        create_tts_graph(chain_policy(), table_prm({}), "revision", cfg)


# -- hybrid -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "split"),
    [
        (1, (1, 1)),
        (2, (1, 2)),  # sqrt 1.41 -> 1 chain of 2
        (3, (1, 3)),  # sqrt 1.73 -> 1 chain: an attempt and two revisions
        (4, (2, 2)),
        (8, (2, 4)),  # sqrt 2.83 -> 2 (truncated, as the reference); 8 // 2 = 4
        (10, (3, 3)),
        (16, (4, 4)),
        (20, (4, 5)),  # sqrt 4.47 -> 4; 20 // 4 = 5
        (30, (5, 6)),
        (64, (8, 8)),
        (99, (9, 11)),  # sqrt 9.95 -> 9; 99 // 9 = 11
    ],
)
def test_sqrt_split_arithmetic(budget: int, split: tuple[int, int]):
    m, t = sqrt_split(budget)
    assert (m, t) == split
    assert m * t <= budget < m * (t + 1)


@pytest.mark.parametrize("bad", [0, -4, 2.5, True])
def test_sqrt_split_rejects_bad_budget(bad):
    with pytest.raises(ConfigError, match="budget"):
        sqrt_split(bad)


def test_hybrid_batches_all_chains_per_round():
    policy, seen = chain_policy(), []
    prm = table_prm({(1, 1): 0.85}, seen)
    cfg = {"chains": 3, "revisions": 2}
    out = create_tts_graph(policy, prm, "hybrid", cfg).invoke({"question": "q"})
    assert [c[:2] for c in policy.calls] == [(1, 3), (3, 1), (3, 1)]
    assert prm.calls == [3, 3, 3]
    assert len(out["candidates"]) == 9
    assert out["answer"] == "11"  # chain 1, round 1: the verifier's favourite
    assert set(seen) == {"q"}


def test_hybrid_sqrt_split_plan_and_per_chain_early_stop():
    assert HybridConfig(split="sqrt", budget=9).chain_plan == (3, 2)  # 3 chains x 3 attempts
    assert HybridConfig(split="sqrt", budget=20).chain_plan == (4, 4)  # 4 x 5
    assert HybridConfig().chain_plan == (4, 3)  # 16 generations
    # Chain 0 is confident at once and chain 2 after one revision: they stop being revised.
    policy = chain_policy()
    prm = table_prm({(0, 0): 0.95, (2, 1): 0.92})
    g = create_tts_graph(policy, prm, "hybrid", {"split": "sqrt", "budget": 9})
    updates = [
        u["round"] for u in g.stream({"question": "q"}, stream_mode="updates") if "round" in u
    ]
    assert len(updates) == 3  # one update per round
    assert [len(u["active"]) for u in updates] == [2, 1, 1]
    assert [c[:2] for c in policy.calls] == [(1, 3), (2, 1), (1, 1)]
    out = g.invoke({"question": "q"})
    assert out["answer"] == "0" and len(out["candidates"]) == 6


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"split": "sqrt"}, "needs budget"),
        ({"budget": 16}, "only used with split='sqrt'"),
        ({"split": "even"}, "split"),
        ({"chains": 0}, "chains"),
        ({"split": "sqrt", "budget": 0}, "budget"),
    ],
)
def test_bad_hybrid_config(cfg: dict, match: str):
    with pytest.raises(ConfigError, match=match):
        create_tts_graph(chain_policy(), table_prm({}), "hybrid", cfg)


async def test_hybrid_async():
    g = create_tts_graph(chain_policy(), table_prm({}), "hybrid", {"chains": 2, "revisions": 1})
    out = await g.ainvoke({"question": "q"})
    assert out["usage"].policy_calls == 2 and len(out["candidates"]) == 4


# -- backtrack revision -----------------------------------------------------------------


def _backtrack_policy(prefixes: list[list[str]]) -> FakePolicy:
    """Writes the steps missing from a 3-step solution, tagged with the round."""

    def step(p: Trajectory, i: int) -> str:
        prefixes.append(list(p.steps))
        r = len(prefixes) - 1
        rest = [f"r{r} s{k}" for k in range(len(p.steps), 3)]
        return "\n\n".join([*rest, f"\\boxed{{{r}}}"])

    return FakePolicy(step)


def test_backtrack_rewrites_from_the_weakest_step():
    prefixes: list[list[str]] = []
    weak = {"r0 s1": 0.2, "r1 s2": 0.3}
    prm = FakePRM(lambda t: [weak.get(s, 0.9) for s in t.steps])
    cfg = {"revisions": 2, "revise": "backtrack", "stop_threshold": None, "seed": 5}
    policy = _backtrack_policy(prefixes)
    out = create_tts_graph(policy, prm, "revision", cfg).invoke({"question": "q"})
    # round 0 from scratch; round 1 keeps the step before "r0 s1"; round 2 the two before "r1 s2"
    assert prefixes == [[], ["r0 s0"], ["r0 s0", "r1 s1"]]
    texts = {c.text for c in out["candidates"]}
    assert "r0 s0\n\nr1 s1\n\nr2 s2\n\n\\boxed{2}" in texts
    assert [c[2].seed for c in policy.calls] == [5, 6, 7]  # no round repeats a sample
    assert out["usage"].policy_calls == 3 and out["usage"].prm_calls == 3
    # the first of equal minima is cut; an unscored attempt restarts from the question
    from langchain_tts.strategies.revision import backtrack_prefix

    t = Trajectory(question="q", steps=["a", "b", "c"], step_scores=[0.5, 0.1, 0.1])
    assert backtrack_prefix(t).steps == ["a"]
    assert backtrack_prefix(t.copy_with(step_scores=[])).steps == []


def test_backtrack_needs_a_prm():
    policy = _backtrack_policy([])
    with pytest.raises(ConfigError, match="backtrack.*needs a PRM"):
        create_tts_graph(policy, None, "revision", {"revise": "backtrack", "selection": "majority"})
    g = create_tts_graph(policy, None, "hybrid", {"selection": "majority", "chains": 2})
    with pytest.raises(ConfigError, match="backtrack.*needs a PRM"):  # as a call-time override
        g.invoke({"question": "q"}, {"configurable": {"revise": "backtrack"}})
    with pytest.raises(ConfigError, match="revise"):
        create_tts_graph(policy, FakePRM(lambda t: [0.5]), "revision", {"revise": "rewind"})


def test_the_feedback_template_tells_the_policy_which_step_the_verifier_doubts():
    from langchain_tts.strategies.revision import FEEDBACK_REVISION_TEMPLATE, verifier_feedback

    prompts: list[str] = []
    prm = FakePRM(lambda t: [0.9, 0.2][: len(t.steps)])  # the second step is the weak one
    cfg = {"revisions": 1, "stop_threshold": None, "revision_template": FEEDBACK_REVISION_TEMPLATE}
    create_tts_graph(chain_policy(prompts), prm, "revision", cfg).invoke({"question": "q"})
    revised = [p for p in prompts if "Previous attempt" in p]
    assert revised and all(
        "The verifier doubts step 2 (score 0.20): \\boxed{0}" in p for p in revised
    ), revised
    assert verifier_feedback(Trajectory(question="q", steps=["a"])) == ""  # unscored
    # the default template carries the feedback, and {feedback} is optional in a template
    assert DEFAULT_REVISION_TEMPLATE == FEEDBACK_REVISION_TEMPLATE
    assert render_revision_prompt("{question}|{attempt}|{feedback}", "q", "a", "f") == "q|a|f"


@pytest.mark.slow
def test_revision_with_feedback_runs_on_the_embedded_models():
    from langchain_tts import load_default
    from langchain_tts.strategies.revision import FEEDBACK_REVISION_TEMPLATE

    policy, prm = load_default("small-revise")
    cfg = {"revisions": 2, "stop_threshold": None, "seed": 0}
    cfg["revision_template"] = FEEDBACK_REVISION_TEMPLATE
    out = create_tts_graph(policy, prm, "revision", cfg).invoke(
        {"question": "Start with 14. Add 9. Multiply by 3."}
    )
    assert out["answer"] is not None and len(out["candidates"]) == 3


def test_a_policy_not_trained_to_revise_gets_a_warning_pointing_at_the_caller():
    policy = chain_policy()
    policy.trained_to_revise = False  # what the embedded `small` and `large` policies carry
    with pytest.warns(UserWarning, match="not trained to revise") as caught:
        create_tts_graph(policy, table_prm({}), "hybrid")
    assert caught[0].filename == __file__
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_tts_graph(policy, table_prm({}), "revision", {"revise": "backtrack"})
        create_tts_graph(chain_policy(), table_prm({}), "revision")  # unknown: no warning


@pytest.mark.slow
def test_the_embedded_reviser_fixes_the_step_the_verifier_doubts():
    """`small-revise` was trained on its own attempts in the feedback template: given a
    solution with one nudged result and the calculator's feedback, its greedy revision is
    right most of the time; `small`, never trained to revise, is lost in such a prompt."""
    import random

    from langchain_tts.eval.synthetic import corrupt_steps_at, make_split
    from langchain_tts.models import load_default_policy, load_default_prm
    from langchain_tts.strategies.revision import verifier_feedback

    prm = load_default_prm("calculator")
    problems = [p for p in make_split("validation", 200) if p.difficulty >= 3][:16]
    rng = random.Random(0)
    prompts = []
    for p in problems:
        steps, _ = corrupt_steps_at(p, rng)
        attempt = Trajectory(question=p.question, steps=steps)
        attempt = attempt.copy_with(step_scores=prm.score([attempt]).scores[0])
        assert "The verifier doubts" in verifier_feedback(attempt)
        prompts.append(
            render_revision_prompt(
                DEFAULT_REVISION_TEMPLATE, p.question, attempt.text, verifier_feedback(attempt)
            )
        )
    fixed = {}
    for size in ("small-revise", "small"):
        cot = create_tts_graph(load_default_policy(size), None, "cot")  # greedy, whole solution
        outs = cot.batch([{"question": q} for q in prompts])
        fixed[size] = sum(o["answer"] == p.answer for o, p in zip(outs, problems))
    assert fixed["small-revise"] >= 12 and fixed["small"] <= 2, fixed
