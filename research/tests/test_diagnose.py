"""The search diagnosis of the embedded models (``python -m research.diagnose``)."""

import pytest

from research.diagnose import diagnose


@pytest.mark.slow
def test_diagnosis_measures_verifiers_and_selection():
    d = diagnose(pairs=8, problems=2, samples=2)
    assert set(d.pairwise) == {
        "policy likelihood",
        "policy likelihood, PRM format",
        "PRM strong (last step)",
        "PRM weak (last step)",
    }
    assert all(0.0 <= v <= 1.0 for v in d.pairwise.values())
    # The shipped policy knows a nudged result is wrong in its own format: its likelihood
    # ranks the gold solution first (100/100 on the full diagnosis). This is the signal a
    # PRM initialised from it has to learn to read.
    assert d.pairwise["policy likelihood"] >= 0.75
    assert {"greedy CoT", "pass@2 (oracle)", "PRM strong@2", "large policy likelihood@2"} <= set(
        d.accuracy
    )
    assert d.accuracy["pass@2 (oracle)"] >= d.accuracy["PRM strong@2"]
    assert "| pick | accuracy % |" in d.markdown()
