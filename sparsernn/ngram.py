"""Word n-gram language models for decoding CTC speech models.

``build(sentences, order)`` estimates an interpolated modified Kneser-Ney model (Chen & Goodman 1998)
as KenLM's ``lmplz`` does: the highest order counts n-grams, each lower order counts the distinct words
seen before an n-gram (its continuation count; n-grams that begin with ``<s>`` keep their own counts,
as nothing precedes them), and every order has three discounts from its counts of counts,

    Y = n1 / (n1 + 2 n2),  D1 = 1 - 2Y n2/n1,  D2 = 2 - 3Y n3/n2,  D3+ = 3 - 4Y n4/n3,

so that ``p(w | c) = (a(c w) - D(a(c w))) / sum_x a(c x) + gamma(c) p(w | c')`` with ``gamma(c)`` the
discounted mass, and the unigrams interpolate with the uniform distribution over the words that can be
predicted (``</s>`` and ``<unk>`` included, ``<s>`` not). ``write_arpa`` writes it in the ARPA format;
``NgramLM`` reads any ARPA file (ours, KenLM's, SRILM's) and scores words with back-off.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sparsernn.errors import UserError

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
#: ARPA's log10 probability for <s>, which is never predicted.
NEVER = -99.0
#: Discounts (D1, D2, D3+) used when an order's counts of counts cannot give valid ones (tiny corpora),
#: as ``lmplz --discount_fallback`` does.
FALLBACK = (0.5, 1.0, 1.5)
LN10 = math.log(10.0)

Gram = tuple[str, ...]


class ArpaError(UserError):
    """A malformed ARPA file; the message names the file and the line."""


@dataclass
class NgramModel:
    """An estimated model: per order, each n-gram's log10 probability and (for contexts) back-off."""

    order: int
    probabilities: list[dict[Gram, float]]  # [n - 1][gram] -> log10 p(last word | the others)
    backoffs: list[dict[Gram, float]]  # [n - 1][gram] -> log10 gamma(gram), grams that are contexts
    discounts: list[tuple[float, float, float]]  # per order (D1, D2, D3+)
    fallback: list[bool]  # per order: the discounts are FALLBACK
    sentences: int  # the sentences it was estimated from


def tokenize(lines: Iterable[str]) -> list[list[str]]:
    """Sentences as lists of words (whitespace-separated), empty lines dropped."""
    return [words for line in lines if (words := line.split())]


def count_ngrams(sentences: Sequence[Sequence[str]], order: int) -> list[Counter]:
    """``counts[n - 1][gram]``: occurrences of each n-gram (n = 1 .. order) in the sentences, each
    padded as ``<s> words </s>``."""
    counts = [Counter() for _ in range(order)]
    for sentence in sentences:
        padded = (BOS, *sentence, EOS)
        for n in range(1, order + 1):
            counts[n - 1].update(padded[i:i + n] for i in range(len(padded) - n + 1))
    return counts


def adjusted_counts(counts: list[Counter]) -> list[dict[Gram, int]]:
    """Kneser-Ney's counts: the highest order's own, below it the number of distinct words that precede
    each n-gram, except for n-grams that begin with ``<s>`` (nothing precedes them): their own."""
    adjusted = [dict(counts[-1])]
    for n in range(len(counts) - 1, 0, -1):  # orders len-1 .. 1, from the order above them
        left = Counter(gram[1:] for gram in counts[n])  # distinct (n+1)-grams per n-gram suffix
        adjusted.insert(0, {gram: count if gram[0] == BOS else left[gram]
                            for gram, count in counts[n - 1].items()})
    return adjusted


def discounts(adjusted: Iterable[int]) -> tuple[tuple[float, float, float], bool]:
    """(D1, D2, D3+) from the counts of counts n1..n4 of one order, and whether they fell back to
    :data:`FALLBACK` (a count of counts is zero, or a discount is outside (0, k))."""
    n = Counter(a for a in adjusted if a <= 4)
    if all(n[k] > 0 for k in (1, 2, 3, 4)):
        y = n[1] / (n[1] + 2 * n[2])
        values = (1 - 2 * y * n[2] / n[1], 2 - 3 * y * n[3] / n[2], 3 - 4 * y * n[4] / n[3])
        if all(0 < d < k for k, d in enumerate(values, start=1)):
            return values, False
    return FALLBACK, True


def build(sentences: Sequence[Sequence[str]], order: int) -> NgramModel:
    """An interpolated modified Kneser-Ney model of the sentences (lists of words)."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if not any(sentences):
        raise UserError("no words to build a language model from (the text is empty)")
    for sentence in sentences:
        for word in sentence:
            if word in (BOS, EOS):
                raise UserError(f"the text holds {word!r}, which the model adds around every line itself")
    adjusted = adjusted_counts(count_ngrams(sentences, order))
    if (UNK,) not in adjusted[0]:
        adjusted[0][(UNK,)] = 0  # predictable, with only the interpolated mass
    probabilities: list[dict[Gram, float]] = []
    backoffs: list[dict[Gram, float]] = []
    found, fell_back = [], []
    lower: dict[Gram, float] = {}  # p of the order below, not log
    for n in range(1, order + 1):
        grams = {g: a for g, a in adjusted[n - 1].items() if g != (BOS,)}
        d, fallback = discounts(a for a in grams.values() if a > 0)
        found.append(d)
        fell_back.append(fallback)
        total: dict[Gram, float] = defaultdict(float)
        mass: dict[Gram, float] = defaultdict(float)  # discounted mass per context
        for gram, a in grams.items():
            total[gram[:-1]] += a
            if a > 0:
                mass[gram[:-1]] += d[min(a, 3) - 1]
        gamma = {context: mass[context] / total[context] for context in total}
        p = {}
        for gram, a in grams.items():
            discounted = (a - d[min(a, 3) - 1]) / total[gram[:-1]] if a > 0 else 0.0
            below = 1.0 / len(grams) if n == 1 else lower[gram[1:]]
            p[gram] = discounted + gamma[gram[:-1]] * below
        probabilities.append({gram: math.log10(value) for gram, value in p.items()})
        if n == 1:
            probabilities[0][(BOS,)] = NEVER
        if n > 1:  # the contexts of this order are the grams of the order below
            backoffs.append({context: math.log10(value) for context, value in gamma.items()})
        lower = p
    backoffs.append({})  # the highest order's grams are never contexts
    return NgramModel(order, probabilities, backoffs, found, fell_back, len(sentences))


def _format(value: float) -> str:
    return f"{value:.7g}"


def write_arpa(model: NgramModel, path: str | Path) -> None:
    """The model in the ARPA text format: a ``\\data\\`` section of counts, then one section per order
    of ``log10(p) <TAB> words [<TAB> log10(back-off)]`` lines, then ``\\end\\``."""
    lines = ["\\data\\"] + [f"ngram {n}={len(model.probabilities[n - 1])}" for n in range(1, model.order + 1)]
    for n in range(1, model.order + 1):
        lines += ["", f"\\{n}-grams:"]
        backoffs = model.backoffs[n - 1]
        for gram in sorted(model.probabilities[n - 1]):
            line = f"{_format(model.probabilities[n - 1][gram])}\t{' '.join(gram)}"
            if gram in backoffs:
                line += f"\t{_format(backoffs[gram])}"
            lines.append(line)
    lines += ["", "\\end\\", ""]
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("\n".join(lines))
    temporary.replace(path)


class NgramLM:
    """An ARPA back-off model: ``log_prob(history, word)`` in natural log, with unknown words (in the
    history too) read as ``<unk>``; a model without ``<unk>`` gives unknown words ARPA's -99."""

    def __init__(self, probabilities: list[dict[Gram, float]], backoffs: list[dict[Gram, float]]):
        self.order = len(probabilities)
        self.probabilities, self.backoffs = probabilities, backoffs
        self.words = {gram[0] for gram in probabilities[0]}
        self._cache: dict[tuple[Gram, str], float] = {}

    @classmethod
    def load(cls, path: str | Path) -> NgramLM:
        from sparsernn.data.text import read_text  # a missing, unreadable or empty file: an error naming it

        return cls(*parse_arpa(read_text(Path(path)), str(path)))

    def log_prob(self, history: Sequence[str], word: str) -> float:
        """ln p(word | the last order-1 words of history)."""
        context = tuple(w if w in self.words else UNK for w in history[len(history) - self.order + 1:]) \
            if self.order > 1 else ()
        word = word if word in self.words else UNK
        key = (context, word)
        if key not in self._cache:
            self._cache[key] = self._log10(context, word) * LN10
        return self._cache[key]

    def _log10(self, context: Gram, word: str) -> float:
        penalty = 0.0
        while True:
            gram = (*context, word)
            value = self.probabilities[len(gram) - 1].get(gram)
            if value is not None:
                return penalty + value
            if not context:
                return NEVER  # an unknown word in a model without <unk>
            penalty += self.backoffs[len(context) - 1].get(context, 0.0)
            context = context[1:]

    def sentence_log_prob(self, words: Sequence[str]) -> float:
        """ln p(words </s>) after <s>."""
        history, total = [BOS], 0.0
        for word in [*words, EOS]:
            total += self.log_prob(history, word)
            history.append(word)
        return total

    @cached_property
    def spelled(self) -> frozenset[str]:
        """The words a transcript may spell: the vocabulary, sentence marks and ``<unk>`` left out."""
        return frozenset(self.words) - {BOS, EOS, UNK}

    @cached_property
    def prefixes(self) -> frozenset[str]:
        """Every beginning of a :attr:`spelled` word (the word itself included)."""
        return frozenset(word[:k] for word in self.spelled for k in range(1, len(word) + 1))

    def check_alphabet(self, alphabet: Sequence[str], source: str) -> None:
        """Refuse a model whose words use characters a CTC model with this alphabet cannot emit."""
        emitted = set(alphabet)
        missing = sorted({c for word in self.spelled for c in word} - emitted)
        if missing:
            raise UserError(f"{source}: the language model's words use characters the speech model cannot "
                            f"emit: {' '.join(missing)} (build it from text in the model's alphabet, e.g. "
                            "upper case for AN4)")


def parse_arpa(text: str, source: str = "<arpa>") -> tuple[list[dict], list[dict]]:
    """(probabilities, back-offs) per order from ARPA text; every mistake names ``source:line``."""
    lines = text.splitlines()
    number = 0

    def fail(message: str, at: int | None = None) -> ArpaError:
        return ArpaError(f"{source}:{at if at is not None else number}: {message}")

    def next_content() -> str | None:
        nonlocal number
        while number < len(lines):
            number += 1
            line = lines[number - 1].strip()
            if line:
                return line
        return None

    line = next_content()
    if line is None:
        raise ArpaError(f"{source}: empty file, expected the \\data\\ header")
    if line != "\\data\\":
        raise fail("expected the \\data\\ header")
    sizes: list[int] = []
    line = next_content()
    while line is not None and line.startswith("ngram "):
        key, _, value = line[len("ngram "):].partition("=")
        try:
            n, count = int(key), int(value)
        except ValueError:
            raise fail(f"expected 'ngram N=COUNT', got {line!r}") from None
        if n != len(sizes) + 1 or count < 0:
            raise fail(f"expected 'ngram {len(sizes) + 1}=COUNT' with COUNT >= 0, got {line!r}")
        sizes.append(count)
        line = next_content()
    if not sizes:
        raise fail("no 'ngram N=COUNT' lines in the \\data\\ section")
    probabilities: list[dict[Gram, float]] = []
    backoffs: list[dict[Gram, float]] = []
    for n, size in enumerate(sizes, start=1):
        if line != f"\\{n}-grams:":
            found = f", got {line!r}" if line else ", found the end"
            raise fail(f"expected the \\{n}-grams: section{found}")
        section, backoff, start = {}, {}, number
        line = next_content()
        while line is not None and not line.startswith("\\"):
            fields = line.split()
            if len(fields) not in (n + 1, n + 2):
                raise fail(f"a {n}-gram line needs a log10 probability, {n} words and an optional back-off, "
                           f"got {len(fields)} fields")
            try:
                values = [float(fields[0])] + ([float(fields[-1])] if len(fields) == n + 2 else [])
            except ValueError:
                raise fail(f"not a number in {line!r}") from None
            if not all(math.isfinite(v) for v in values) or values[0] > 0:
                raise fail(f"log10 probabilities must be finite and <= 0, back-offs finite: {line!r}")
            gram = tuple(fields[1:n + 1])
            section[gram] = values[0]
            if len(values) == 2:
                backoff[gram] = values[1]
            line = next_content()
        if len(section) != size:
            raise fail(f"the \\data\\ section announces {size} {n}-grams, the section holds {len(section)}",
                       start)
        probabilities.append(section)
        backoffs.append(backoff)
    if line != "\\end\\":
        raise fail("expected \\end\\" + (f", got {line!r}" if line else " at the end of the file"))
    return probabilities, backoffs
