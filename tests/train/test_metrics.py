import itertools
import math

import pytest
import torch

from sparsernn import ngram
from sparsernn.train.metrics import (
    LMFusion,
    edit_distance,
    error_rates,
    greedy_decode,
    prefix_beam_decode,
    prefix_beam_search,
)

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


SPACED = ("_", " ", "A", "B")


def brute_force_scores(log_probs, fusion):
    """Every transcript's score, summing every alignment (tiny T only): log P_ctc + the LM's part."""
    totals = {}
    for path in itertools.product(range(len(SPACED)), repeat=len(log_probs)):
        collapsed = tuple(c for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1]))
        p = math.exp(sum(log_probs[t, c].item() for t, c in enumerate(path)))
        totals[collapsed] = totals.get(collapsed, 0.0) + p
    return {text: math.log(p) + fusion.score(text) for labels, p in totals.items()
            if (text := "".join(SPACED[c] for c in labels)) is not None}


def tiny_lm(order=2):
    model = ngram.build(ngram.tokenize(["A B", "AB A", "B", "A A B"]), order)
    return ngram.NgramLM(model.probabilities, model.backoffs)


@pytest.mark.parametrize("seed", range(6))
def test_fused_search_scores_every_transcript_as_brute_force_does(seed):
    generator = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(5, 4, generator=generator, dtype=torch.float64).mul(2).log_softmax(-1)
    fusion = LMFusion(tiny_lm(order=1 + seed % 3), alpha=0.8, beta=0.5)
    expected = brute_force_scores(log_probs, fusion)
    found = dict(prefix_beam_search(log_probs, SPACED, beam=100_000, prune=-math.inf, lm=fusion))
    assert found.keys() == expected.keys()
    for text, score in expected.items():
        assert found[text] == pytest.approx(score, abs=1e-9), text
    best = max(expected, key=expected.get)
    assert prefix_beam_decode(log_probs, SPACED, beam=100_000, prune=-math.inf, lm=fusion) == best


@pytest.mark.parametrize("seed", range(4))
def test_lexicon_search_returns_the_brute_force_scores_of_transcripts_of_the_lm_words(seed):
    generator = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(5, 4, generator=generator, dtype=torch.float64).mul(2).log_softmax(-1)
    fusion = LMFusion(tiny_lm(order=1 + seed % 3), alpha=0.8, beta=0.5, lexicon=True)
    assert fusion.lm.spelled == {"A", "B", "AB"}
    expected = {text: score for text, score in brute_force_scores(log_probs, fusion).items()
                if all(word in fusion.lm.spelled for word in text.split())}  # "BA", "BB", "AAB"... dropped
    found = dict(prefix_beam_search(log_probs, SPACED, beam=100_000, prune=-math.inf, lm=fusion))
    assert found.keys() == expected.keys()
    for text, score in expected.items():
        assert found[text] == pytest.approx(score, abs=1e-9), text


def test_a_lexicon_keeps_the_search_to_the_lm_words_where_the_open_one_misspells():
    # The frames say "BA" (no word of the LM; "B A" is two): the open search writes "BA", the lexicon
    # one "B A" even without the LM's weight.
    lm = ngram.NgramLM(*ngram.parse_arpa(ARPA_B_A))
    log_probs = frames([.05, .05, .05, .85], [.5, .3, .1, .1], [.05, .05, .85, .05])
    assert prefix_beam_decode(log_probs, SPACED, beam=16, lm=LMFusion(lm, alpha=0.0, beta=0.0)) == "BA"
    assert prefix_beam_decode(log_probs, SPACED, beam=16,
                              lm=LMFusion(lm, alpha=0.0, beta=0.0, lexicon=True)) == "B A"


def test_fusion_score_is_alpha_times_the_sentence_log_prob_plus_beta_per_word():
    lm = tiny_lm()
    fusion = LMFusion(lm, alpha=0.7, beta=2.0)
    assert fusion.score("A  B ") == pytest.approx(0.7 * lm.sentence_log_prob(["A", "B"]) + 2 * 2.0)
    assert fusion.score("") == pytest.approx(0.7 * lm.sentence_log_prob([]))


def test_the_language_model_overturns_an_acoustically_likelier_misspelling():
    # The frames say "B", then blank (0.5) or space (0.3), then "A": "BA" by the acoustics alone, but
    # "BA" is no word of the LM (<unk>, 10^-1), and "B A" two words of 10^-0.3 each.
    lm = ngram.NgramLM(*ngram.parse_arpa(ARPA_B_A))
    log_probs = frames([.05, .05, .05, .85], [.5, .3, .1, .1], [.05, .05, .85, .05])
    assert prefix_beam_decode(log_probs, SPACED, beam=16) == "BA"
    assert prefix_beam_decode(log_probs, SPACED, beam=16, lm=LMFusion(lm, alpha=1.0, beta=0.0)) == "B A"


def test_without_a_language_model_the_fused_search_is_the_plain_one():
    generator = torch.Generator().manual_seed(3)
    log_probs = torch.randn(12, 4, generator=generator, dtype=torch.float64).log_softmax(-1)
    plain = prefix_beam_search(log_probs, SPACED, beam=8)
    neutral = prefix_beam_search(log_probs, SPACED, beam=8, lm=LMFusion(tiny_lm(), alpha=0.0, beta=0.0))
    assert plain == neutral


ARPA_B_A = """\\data\\
ngram 1=5

\\1-grams:
-1.0\t<unk>
-99\t<s>
-0.3\tA
-0.3\tB
-0.6\t</s>

\\end\\
"""
