"""The paper's claims as computed verdicts: a difference between two groups of runs (seeds of one
configuration each), its 95% interval, and what follows from it.

A study config lists its claims::

    claims:
      - claim: "1. ~90% sparsity costs a moderate loss at the same width"
        runs: [narang90, narang90-seed1]
        against: [dense, dense-seed1]
        test: within
        margin: 0.25
      - claim: "3. gradual pruning beats hard pruning"
        runs: [narang90]
        against: [oneshot90-late]
        test: better

The measure is the **relative loss** of ``runs`` against ``against``: ``(mean(runs) - mean(against)) /
mean(against)`` for metrics where lower is better (perplexity, CER), the negative of that for BLEU, so a
positive loss is always worse. Its 95% interval is Welch's t interval on the difference of the two means
(``scipy.stats.ttest_ind(equal_var=False)``), divided by ``mean(against)`` (the denominator's own
uncertainty is left out). A ``paired`` claim lists its two sides seed by seed (``runs[i]`` and
``against[i]`` share a seed: the same initialisation and batches until one of them starts pruning); its
interval is the paired t interval on the per-seed differences (``scipy.stats.ttest_rel``), over the seeds
measured on both sides, so that what a seed does to both runs alike cancels. It needs two or more runs
on each side; with fewer the verdict is "not shown (one seed)". Verdicts:

- ``better``: holds if the whole interval is below 0 (``runs`` better), contradicted if it is all above
  0, else not shown;
- ``within``: holds if the whole interval is below ``margin`` (``runs`` at most that much worse),
  contradicted if it is all above ``margin``, else not shown.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Claim(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    claim: str = Field(description="the claim as the report names it")
    runs: tuple[str, ...] = Field(min_length=1, description="the runs the claim is about (seeds of one "
                                  "setup)")
    against: tuple[str, ...] = Field(min_length=1, description="the runs they are compared with")
    test: Literal["better", "within"]
    margin: float = Field(0.0, ge=0.0, description="within: the largest relative loss that still holds")
    paired: bool = Field(False, description="runs[i] and against[i] share a seed and all training before "
                         "pruning: compare them seed by seed")

    @model_validator(mode="after")
    def _pairs(self) -> Claim:
        if self.paired and len(self.runs) != len(self.against):
            raise ValueError(f"a paired claim lists as many runs as against ({len(self.runs)} and "
                             f"{len(self.against)}): {self.claim!r}")
        return self


def headline_metric(result: dict) -> tuple[str, float]:
    """A run's headline metric: test perplexity, greedy CER (both lower is better), or greedy BLEU."""
    if result["task"] == "speech":
        return "CER", result["metrics"]["cer_greedy"]
    if result["task"] == "translation":
        return "BLEU", result["metrics"]["bleu_greedy"]
    return "perplexity", result["metrics"]["perplexity"]


def _signed(values: list[float], higher_is_better: bool) -> list[float]:
    return [-v for v in values] if higher_is_better else list(values)


def verdict(claim: Claim, metric: dict[str, float], higher_is_better: bool) -> dict:
    """The claim against ``metric`` (run name -> test metric): the means, the relative loss, its 95%
    interval (None with fewer than two runs on a side) and the verdict."""
    from scipy import stats

    if claim.paired:  # the seeds measured on both sides
        pairs = [(metric[a], metric[b]) for a, b in zip(claim.runs, claim.against, strict=True)
                 if a in metric and b in metric]
        runs, against = [a for a, _ in pairs], [b for _, b in pairs]
    else:
        runs = [metric[name] for name in claim.runs if name in metric]
        against = [metric[name] for name in claim.against if name in metric]
    result = {"claim": claim.claim, "runs": len(runs), "against": len(against)}
    if not runs or not against:
        return result | {"verdict": "not measured"}
    base = statistics.fmean(against)
    signed = _signed(runs, higher_is_better), _signed(against, higher_is_better)
    loss = statistics.fmean(signed[0]) - statistics.fmean(signed[1])
    result |= {"mean": statistics.fmean(runs), "mean_against": base, "loss": loss / abs(base)}
    if len(runs) < 2 or len(against) < 2:
        return result | {"low": None, "high": None, "verdict": "not shown (one seed)"}
    test = stats.ttest_rel(*signed) if claim.paired else stats.ttest_ind(*signed, equal_var=False)
    interval = test.confidence_interval(0.95)
    low, high = interval.low / abs(base), interval.high / abs(base)
    bound = claim.margin if claim.test == "within" else 0.0
    outcome = "holds" if high < bound else "contradicted" if low > bound else "not shown"
    return result | {"low": low, "high": high, "verdict": outcome}


def claims_table(claims: tuple[Claim, ...], metric: dict[str, float], metric_name: str,
                 higher_is_better: bool) -> list[str]:
    """The report's claims table (markdown lines), each row computed by :func:`verdict`."""
    if not claims:
        return []
    paired = (", or the paired t over per-seed differences where the test says paired"
              if any(claim.paired for claim in claims) else "")
    lines = [f"Claims (test {metric_name}; loss = how much worse than the runs compared with, relative; "
             f"95% interval: Welch's t over seeds{paired}):", "",
             "| claim | runs (seeds) | against (seeds) | loss | 95% interval | test | verdict |",
             "|---|---|---|---|---|---|---|"]
    for claim in claims:
        v = verdict(claim, metric, higher_is_better)
        shown = "-" if "loss" not in v else f"{v['loss']:+.1%}"
        interval = "-" if v.get("low") is None else f"{v['low']:+.1%} to {v['high']:+.1%}"
        test = "better" if claim.test == "better" else f"loss under {claim.margin:.0%}"
        test += ", paired" if claim.paired else ""
        lines.append(f"| {claim.claim} | {', '.join(claim.runs)} ({v['runs']}) "
                     f"| {', '.join(claim.against)} ({v['against']}) | {shown} | {interval} | {test} "
                     f"| {v['verdict']} |")
    return [*lines, ""]


def study_verdicts(out: Path) -> tuple[str, list[dict]]:
    """The metric name and the verdict of each claim of the study in ``out``, from its ``study.yaml``
    and ``results.json`` (as its report computes them)."""
    from sparsernn.study import load_study

    study = load_study(out / "study.yaml")
    runs = json.loads((out / "results.json").read_text())["runs"]
    metric = {r["name"]: headline_metric(r)[1] for r in runs}
    name = headline_metric(runs[0])[0]
    return name, [verdict(claim, metric, higher_is_better=runs[0]["task"] == "translation")
                  for claim in study.claims]


def readme_table(studies: dict[str, Path]) -> str:
    """One table of every study's claims side by side (``studies``: column title -> study directory),
    rows matched by the claim's text: what the README shows."""
    columns = {title: study_verdicts(out) for title, out in studies.items()}
    claims = list(dict.fromkeys(v["claim"] for _, verdicts in columns.values() for v in verdicts))
    header = "| claim | " + " | ".join(f"{title} (test {name})" for title, (name, _) in columns.items())
    header += " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for text in claims:
        cells = []
        for _, verdicts in columns.values():
            v = next((v for v in verdicts if v["claim"] == text), None)
            if v is None or "loss" not in v:
                cells.append("not measured")
            elif v.get("low") is None:
                cells.append(f"{v['loss']:+.1%}, {v['verdict']}")
            else:
                cells.append(f"{v['loss']:+.1%} ({v['low']:+.1%} to {v['high']:+.1%}): **{v['verdict']}**")
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
