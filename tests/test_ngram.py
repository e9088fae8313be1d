import math

import pytest

from sparsernn import ngram
from sparsernn.errors import UserError

# "a b" and "a", padded: <s> a b </s>, <s> a </s>
TINY = [["a", "b"], ["a"]]


def test_counts_and_kneser_ney_continuation_counts_by_hand():
    counts = ngram.count_ngrams(TINY, 2)
    assert counts[0] == {("<s>",): 2, ("a",): 2, ("b",): 1, ("</s>",): 2}
    assert counts[1] == {("<s>", "a"): 2, ("a", "b"): 1, ("b", "</s>"): 1, ("a", "</s>"): 1}
    adjusted = ngram.adjusted_counts(counts)
    assert adjusted[1] == counts[1]  # the highest order keeps its counts
    # a: preceded only by <s>; b: by a; </s>: by b and a; <s> keeps its own count
    assert adjusted[0] == {("<s>",): 2, ("a",): 1, ("b",): 1, ("</s>",): 2}


def test_discounts_from_counts_of_counts_by_hand():
    # n1..n4 = 4, 2, 1, 1: Y = 4 / 8; D1 = 1 - 2 Y 2/4, D2 = 2 - 3 Y 1/2, D3+ = 3 - 4 Y 1/1
    values, fallback = ngram.discounts([1, 1, 1, 1, 2, 2, 3, 4, 7])
    assert not fallback and values == pytest.approx((0.5, 1.25, 1.0))
    assert ngram.discounts([1, 1, 2]) == (ngram.FALLBACK, True)  # no 3s or 4s


def test_bigram_probabilities_and_backoffs_by_hand():
    # Every order falls back to D = 0.5, 1, 1.5 (this corpus has no counts of 3 or 4).
    model = ngram.build(TINY, 2)
    assert model.fallback == [True, True]
    lm = ngram.NgramLM(model.probabilities, model.backoffs)

    def p(history, word):
        return math.exp(lm.log_prob(history, word))

    # Unigrams: continuation counts a 1, b 1, </s> 2, <unk> 0 (total 4); discounted mass
    # 0.5 + 0.5 + 1 = 2 of 4, spread over the 4 predictable words: + 0.125 each.
    assert p([], "a") == pytest.approx(0.5 / 4 + 0.125)
    assert p([], "b") == pytest.approx(0.5 / 4 + 0.125)
    assert p([], "</s>") == pytest.approx(1 / 4 + 0.125)
    assert p([], "<unk>") == pytest.approx(0.125)
    assert p([], "never seen") == pytest.approx(0.125)
    # After <s>: a twice (D2 = 1), gamma = 1/2; after a: b once, </s> once, gamma = 1 / 2
    assert p(["<s>"], "a") == pytest.approx((2 - 1) / 2 + 0.5 * 0.25)
    assert p(["<s>"], "b") == pytest.approx(0.5 * 0.25)  # unseen: back-off times the unigram
    assert p(["a"], "b") == pytest.approx(0.5 / 2 + 0.5 * 0.25)
    assert p(["a"], "</s>") == pytest.approx(0.5 / 2 + 0.5 * 0.375)
    assert p(["b"], "</s>") == pytest.approx(0.5 / 1 + 0.5 * 0.375)
    assert model.probabilities[0][("<s>",)] == ngram.NEVER
    assert model.backoffs[0][("<s>",)] == pytest.approx(math.log10(0.5))
    assert model.backoffs[1] == {}


CORPUS = ngram.tokenize(["the cat sat", "the cat ran", "a cat sat on the mat", "the dog sat", "a dog ran on",
                         "the the cat", "mat sat", "on the mat the cat sat"])


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_context_predicts_a_distribution(order):
    model = ngram.build(CORPUS, order)
    lm = ngram.NgramLM(model.probabilities, model.backoffs)
    vocabulary = sorted(lm.words - {"<s>"})
    histories = (["<s>"], ["<s>", "the"], ["the", "cat"], ["cat", "sat", "on"], ["x", "y"], ["mat", "the"])
    for history in histories:
        assert sum(math.exp(lm.log_prob(history, w)) for w in vocabulary) == pytest.approx(1.0, abs=1e-6)


def test_arpa_round_trip(tmp_path):
    model = ngram.build(CORPUS, 3)
    ngram.write_arpa(model, tmp_path / "lm.arpa")
    text = (tmp_path / "lm.arpa").read_text()
    assert text.startswith("\\data\\\nngram 1=") and text.rstrip().endswith("\\end\\")
    loaded = ngram.NgramLM.load(tmp_path / "lm.arpa")
    built = ngram.NgramLM(model.probabilities, model.backoffs)
    for history, word in [(["<s>"], "the"), (["the", "cat"], "sat"), (["dog"], "mat"), (["on", "x"], "cat")]:
        assert loaded.log_prob(history, word) == pytest.approx(built.log_prob(history, word), abs=1e-5)


def test_kenlm_reads_our_arpa_and_agrees(tmp_path):
    kenlm = pytest.importorskip("kenlm")
    model = ngram.build(CORPUS, 3)
    ngram.write_arpa(model, tmp_path / "lm.arpa")
    theirs = kenlm.Model(str(tmp_path / "lm.arpa"))
    ours = ngram.NgramLM.load(tmp_path / "lm.arpa")
    for sentence in ["the cat sat", "a dog sat on the mat", "cat the"]:
        assert theirs.score(sentence, bos=True, eos=True) == pytest.approx(
            ours.sentence_log_prob(sentence.split()) / ngram.LN10, abs=1e-4)


def test_empty_text_and_reserved_words_are_refused():
    with pytest.raises(UserError, match="empty"):
        ngram.build(ngram.tokenize(["", "  "]), 3)
    with pytest.raises(UserError, match="<s>"):
        ngram.build([["a", "<s>"]], 2)


GOOD = ("\\data\\\nngram 1=2\nngram 2=1\n\n\\1-grams:\n-0.5\ta\t-0.1\n-0.3\t</s>\n\n"
        "\\2-grams:\n-0.2\ta </s>\n\n\\end\\\n")


def test_a_good_arpa_parses():
    probabilities, backoffs = ngram.parse_arpa(GOOD)
    assert probabilities == [{("a",): -0.5, ("</s>",): -0.3}, {("a", "</s>"): -0.2}]
    assert backoffs == [{("a",): -0.1}, {}]


@pytest.mark.parametrize("text, message", [
    ("", r"lm.arpa: the file is empty"),
    ("ngram 1=2\n", r"lm.arpa:1: expected the \\data\\ header"),
    (GOOD.replace("ngram 1=2", "ngram 1=3"), r"lm.arpa:5: .*announces 3 1-grams, the section holds 2"),
    (GOOD.replace("ngram 2=1", "ngram two=1"), r"lm.arpa:3: expected 'ngram N=COUNT'"),
    (GOOD.replace("-0.3\t</s>", "-zero\t</s>"), r"lm.arpa:7: not a number"),
    (GOOD.replace("-0.2\ta </s>", "-0.2\ta"), r"lm.arpa:10: a 2-gram line needs"),
    (GOOD.replace("\\2-grams:", "\\3-grams:"), r"lm.arpa:9: expected the \\2-grams: section"),
    (GOOD.replace("\\end\\", ""), r"lm.arpa:\d+: expected \\end\\ at the end"),
    (GOOD.replace("-0.5\ta", "0.5\ta"), r"lm.arpa:6: log10 probabilities must be finite and <= 0"),
    (GOOD.replace("ngram 1=2\nngram 2=1\n", ""), r"lm.arpa:3: no 'ngram N=COUNT' lines"),
])
def test_malformed_arpa_names_the_line(tmp_path, text, message):
    (tmp_path / "lm.arpa").write_text(text)
    with pytest.raises(UserError, match=message):
        ngram.NgramLM.load(tmp_path / "lm.arpa")


def test_missing_arpa_file(tmp_path):
    with pytest.raises(UserError, match="none.arpa: file not found"):
        ngram.NgramLM.load(tmp_path / "none.arpa")


def test_words_the_speech_model_cannot_emit_are_listed():
    lm = ngram.NgramLM(*ngram.parse_arpa(GOOD.replace("\ta", "\tcafé").replace("ngram", "ngram")))
    with pytest.raises(UserError, match=r"lm.arpa: .*cannot emit: a c f é"):
        lm.check_alphabet(("<blank>", " ", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"), "lm.arpa")
    upper = ngram.NgramLM(*ngram.parse_arpa(GOOD.replace("\ta", "\tCAFE")))
    upper.check_alphabet(("<blank>", " ", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"), "lm.arpa")
