import itertools
import math

import pytest
import torch

from sparsernn.train.metrics import edit_distance, error_rates, greedy_decode, prefix_beam_decode

ALPHABET = ("_", "A", "B")


def test_edit_distance_hand_cases():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3
    assert edit_distance("abc", "abc") == 0
    assert edit_distance("ab", "ba") == 2
    assert edit_distance("GO ONE".split(), "NO ONE TWO".split()) == 2


def test_error_rates_are_corpus_totals():
    rates = error_rates(["AB C", "DE"], ["AB", "DF"])
    assert rates["cer"] == pytest.approx((2 + 1) / (4 + 2))  # "AB C"->"AB": 2 deletions; one sub
    assert rates["wer"] == pytest.approx((1 + 1) / (2 + 1))


def frames(*rows):
    return torch.tensor(rows, dtype=torch.float64).log()


def test_greedy_merges_repeats_and_drops_blanks():
    probs = frames([.1, .8, .1], [.1, .8, .1], [.8, .1, .1], [.1, .8, .1], [.1, .1, .8], [.8, .1, .1])
    assert greedy_decode(probs, ALPHABET) == "AAB"


def brute_force_best(log_probs):
    """The labelling with the highest total probability, summing every alignment (tiny T only)."""
    totals = {}
    for path in itertools.product(range(3), repeat=len(log_probs)):
        collapsed = tuple(c for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1]))
        p = math.exp(sum(log_probs[t, c].item() for t, c in enumerate(path)))
        totals[collapsed] = totals.get(collapsed, 0.0) + p
    return "".join(ALPHABET[c] for c in max(totals, key=totals.get))


def test_beam_search_sums_alignments_where_greedy_does_not():
    # Greedy picks blank at every frame (""), but "A" has more total probability: 1 - 0.6^2 = 0.64
    probs = frames([.6, .4, 0.0001], [.6, .4, 0.0001])
    assert greedy_decode(probs, ALPHABET) == ""
    assert prefix_beam_decode(probs, ALPHABET, beam=4) == brute_force_best(probs) == "A"


@pytest.mark.parametrize("seed", range(8))
def test_beam_search_finds_the_brute_force_best_on_random_frames(seed):
    generator = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(5, 3, generator=generator, dtype=torch.float64).mul(2).log_softmax(-1)
    assert prefix_beam_decode(log_probs, ALPHABET, beam=64, prune=-math.inf) == brute_force_best(log_probs)
