"""Claims as computed verdicts: Welch intervals against hand-computed values, and each verdict."""

import pytest

from sparsernn.study import StudyConfig
from sparsernn.study.claims import Claim, claims_table, verdict

METRIC = {"a0": 1.0, "a1": 2.0, "a2": 3.0, "b0": 4.0, "b1": 5.0, "b2": 6.0, "c0": 4.5, "c1": 5.5,
          "d0": 4.0, "d1": 6.0, "d2": 5.5}


def claim(runs, against, test="better", margin=0.0, paired=False):
    return Claim(claim="c", runs=runs, against=against, test=test, margin=margin, paired=paired)


def test_welch_interval_by_hand():
    """a = 1, 2, 3 against b = 4, 5, 6: difference -3, standard error sqrt(1/3 + 1/3), Welch's 4 degrees
    of freedom, t(0.975, 4) = 2.776445; relative to mean(b) = 5."""
    v = verdict(claim(("a0", "a1", "a2"), ("b0", "b1", "b2")), METRIC, higher_is_better=False)
    half = 2.776445 * (2 / 3) ** 0.5
    assert v["loss"] == pytest.approx(-3 / 5)
    assert v["low"] == pytest.approx((-3 - half) / 5, rel=1e-5)
    assert v["high"] == pytest.approx((-3 + half) / 5, rel=1e-5)
    assert v["verdict"] == "holds"
    assert verdict(claim(("b0", "b1", "b2"), ("a0", "a1", "a2")), METRIC, False)["verdict"] == \
        "contradicted"
    assert verdict(claim(("b0", "b1", "b2"), ("c0", "c1")), METRIC, False)["verdict"] == "not shown"


def test_paired_interval_by_hand():
    """a = 1, 2, 3 against d = 4, 6, 5.5 seed by seed: differences -3, -4, -2.5, mean -19/6, standard
    deviation sqrt(7/12), 2 degrees of freedom, t(0.975, 2) = 4.302653; relative to mean(d) = 31/6. Welch's
    interval on the same numbers is wider: it counts what the pairs share as noise."""
    runs, against = ("a0", "a1", "a2"), ("d0", "d1", "d2")
    v = verdict(claim(runs, against, paired=True), METRIC, higher_is_better=False)
    half = 4.302653 * (7 / 12) ** 0.5 / 3 ** 0.5
    assert v["loss"] == pytest.approx((-19 / 6) / (31 / 6))
    assert v["low"] == pytest.approx((-19 / 6 - half) / (31 / 6), rel=1e-5)
    assert v["high"] == pytest.approx((-19 / 6 + half) / (31 / 6), rel=1e-5)
    assert v["verdict"] == "holds"
    welch = verdict(claim(runs, against), METRIC, higher_is_better=False)
    assert welch["loss"] == pytest.approx(v["loss"]) and welch["low"] < v["low"]


def test_paired_claims_use_the_seeds_measured_on_both_sides():
    """A seed missing on one side drops from both; the means are over the pairs left."""
    v = verdict(claim(("a0", "a1", "a2"), ("d0", "d1", "gone"), paired=True), METRIC, False)
    assert (v["runs"], v["against"]) == (2, 2)
    assert v["mean"] == 1.5 and v["mean_against"] == 5.0
    assert v["loss"] == pytest.approx(-3.5 / 5) and v["low"] < v["loss"] < v["high"]
    assert claims_table((claim(("a0", "a1"), ("d0", "d1"), paired=True),), METRIC, "CER", False)[4] \
        .endswith("| better, paired | not shown |")
    with pytest.raises(ValueError, match="a paired claim lists as many runs as against"):
        claim(("a0", "a1"), ("d0",), paired=True)


def test_higher_is_better_turns_the_sign():
    """BLEU: the runs scoring less are worse, a positive loss."""
    v = verdict(claim(("a0", "a1", "a2"), ("b0", "b1", "b2")), METRIC, higher_is_better=True)
    assert v["loss"] == pytest.approx(3 / 5) and v["verdict"] == "contradicted"


def test_within_a_margin():
    """b against c: loss (5 - 5) / 5 = 0, interval about +-50%: inside a 100% margin, not shown for 10%.
    b against a: loss (5 - 2) / 2 = 150%, interval (3 -+ 2.27) / 2 = 37% to 263%: above a 30% margin."""
    def outcome(runs, against, margin):
        return verdict(claim(runs, against, "within", margin), METRIC, False)["verdict"]

    assert outcome(("b0", "b1", "b2"), ("c0", "c1"), 1.0) == "holds"
    assert outcome(("b0", "b1", "b2"), ("c0", "c1"), 0.1) == "not shown"
    assert outcome(("b0", "b1", "b2"), ("a0", "a1", "a2"), 0.3) == "contradicted"
    assert outcome(("b0", "b1", "b2"), ("a0", "a1", "a2"), 0.5) == "not shown"


def test_one_seed_or_missing_runs():
    assert verdict(claim(("a0",), ("b0", "b1")), METRIC, False) == {
        "claim": "c", "runs": 1, "against": 2, "mean": 1.0, "mean_against": 4.5,
        "loss": pytest.approx(-3.5 / 4.5), "low": None, "high": None, "verdict": "not shown (one seed)"}
    assert verdict(claim(("x",), ("b0",)), METRIC, False)["verdict"] == "not measured"
    table = claims_table((claim(("a0", "a1", "a2"), ("b0", "b1", "b2")), claim(("x",), ("b0",))), METRIC,
                         "perplexity", False)
    assert table[2] == "| claim | runs (seeds) | against (seeds) | loss | 95% interval | test | verdict |"
    assert table[4] == ("| c | a0, a1, a2 (3) | b0, b1, b2 (3) | -60.0% | -105.3% to -14.7% | better "
                        "| holds |")
    assert table[5] == "| c | x (0) | b0 (1) | - | - | better | not measured |"


def test_a_claim_must_name_runs_of_the_study():
    with pytest.raises(ValueError, match=r"names runs that are not in the study: \['gone'\]"):
        StudyConfig.model_validate({"title": "t", "baseline": "d",
                                    "runs": [{"name": "d", "config": "d.yaml"}],
                                    "claims": [{"claim": "c", "runs": ["gone"], "against": ["d"],
                                                "test": "better"}]})


def test_the_readme_claims_table_is_the_reports():
    """The README's table is what the committed studies compute (rewrite it with
    `python scripts/readme_claims.py` after a report changes)."""
    from scripts.readme_claims import ROOT, with_table

    readme = (ROOT / "README.md").read_text()
    assert readme == with_table(readme)
    assert "| 1. ~90% sparsity costs a moderate loss at the same width |" in readme
