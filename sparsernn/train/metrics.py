"""CTC decoding (greedy, and prefix beam search with or without a word n-gram language model) and
error rates by edit distance."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sparsernn.ngram import BOS, EOS, NgramLM


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance: the fewest substitutions, insertions and deletions."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        diagonal, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, start=1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ref != hyp))
    return row[-1]


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus character and word error rates: total edits over total reference characters (words)."""
    char_edits = sum(edit_distance(r, h) for r, h in zip(references, hypotheses, strict=True))
    word_edits = sum(edit_distance(r.split(), h.split()) for r, h in zip(references, hypotheses, strict=True))
    chars = sum(len(r) for r in references)
    words = sum(len(r.split()) for r in references)
    return {"cer": char_edits / max(1, chars), "wer": word_edits / max(1, words)}


def greedy_decode(log_probs: torch.Tensor, alphabet: Sequence[str], blank: int = 0) -> str:
    """Best label per frame, repeats merged, blanks dropped; ``log_probs`` (T, alphabet)."""
    best = log_probs.argmax(dim=-1).tolist()
    return "".join(alphabet[c] for i, c in enumerate(best) if c != blank and (i == 0 or c != best[i - 1]))


def _add(a: float, b: float) -> float:
    """log(exp(a) + exp(b))."""
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    high, low = max(a, b), min(a, b)
    return high + math.log1p(math.exp(low - high))


@dataclass(frozen=True)
class LMFusion:
    """A word language model fused into the prefix beam search (Hannun et al. 2014): a transcript W
    scores ``log P_ctc(W | audio) + alpha * log P_lm(W) + beta * words(W)``, natural logs, the
    sentence's end included in ``P_lm``. Words are the runs of non-space characters. With ``lexicon``,
    transcripts are spelled from the LM's words only (as a lexicon decoder's are): a word that is no
    prefix of one is not extended, and a transcript whose words are not all the LM's is dropped."""

    lm: NgramLM
    alpha: float = 0.5
    beta: float = 1.0
    lexicon: bool = False

    def spells(self, partial: str) -> bool:
        """Whether a word may begin so: any, or with ``lexicon`` the beginning of one of the LM's."""
        return not self.lexicon or partial in self.lm.prefixes

    def closes(self, partial: str) -> bool:
        """Whether a word may end so: any, or with ``lexicon`` one of the LM's."""
        return not self.lexicon or partial in self.lm.spelled

    def word(self, history: tuple[str, ...], word: str) -> float:
        return self.alpha * self.lm.log_prob((BOS, *history), word) + self.beta

    def end(self, history: tuple[str, ...]) -> float:
        return self.alpha * self.lm.log_prob((BOS, *history), EOS)

    def score(self, text: str) -> float:
        """The LM's part of a whole transcript's score."""
        words = tuple(text.split())
        return sum(self.word(words[:i], w) for i, w in enumerate(words)) + self.end(words)


def prefix_beam_search(log_probs: torch.Tensor, alphabet: Sequence[str], beam: int = 16, blank: int = 0,
                       prune: float = -12.0, lm: LMFusion | None = None) -> list[tuple[str, float]]:
    """CTC prefix beam search (Hannun et al. 2014): the beam's transcripts with their scores, best first.

    Each prefix keeps the log-probability of all alignments that end in a blank and of those that
    end in its last label, so that alignments collapsing to the same text are summed, which greedy
    decoding does not do. Labels below ``prune`` (log-probability) at a frame are not extended. With
    ``lm``, a prefix's score adds the LM's part for each word it completes (at the space after it), and
    the final scores add the last word's and the sentence end's; with ``lm.lexicon``, only the spellings
    of the LM's words are extended, and only transcripts of its words are returned.
    """
    frames = log_probs.double().tolist()
    space = alphabet.index(" ") if " " in alphabet else None
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # (blank, non-blank)
    # Per prefix (with an LM): its completed words, the word it is in, and the LM's part so far.
    words: dict[tuple[int, ...], tuple[tuple[str, ...], str, float]] = {(): ((), "", 0.0)}

    def extended(prefix: tuple[int, ...], c: int) -> tuple[int, ...] | None:
        """The prefix and ``c``; None where the lexicon has no word spelled so."""
        new = (*prefix, c)
        if lm is not None and new not in words:
            done, partial, part = words[prefix]
            if c == space:
                if partial and not lm.closes(partial):
                    return None
                words[new] = (done + (partial,), "", part + lm.word(done, partial)) if partial else \
                    (done, "", part)
            else:
                if not lm.spells(partial + alphabet[c]):
                    return None
                words[new] = (done, partial + alphabet[c], part)
        return new

    def ranked(prefix: tuple[int, ...], scores) -> float:
        return _add(*scores) + (words[prefix][2] if lm is not None else 0.0)

    for frame in frames:
        candidates = [c for c, value in enumerate(frame) if value > prune] or [max(range(len(frame)),
                                                                                    key=frame.__getitem__)]
        next_beams: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [-math.inf, -math.inf])
        for prefix, (p_blank, p_label) in beams.items():
            total = _add(p_blank, p_label)
            for c in candidates:
                p = frame[c]
                if c == blank:
                    entry = next_beams[prefix]
                    entry[0] = _add(entry[0], total + p)
                    continue
                repeat = bool(prefix) and prefix[-1] == c
                longer = extended(prefix, c)
                if longer is not None:
                    # A repeat extends only from a blank; without one it collapses into the prefix.
                    entry = next_beams[longer]
                    entry[1] = _add(entry[1], (p_blank if repeat else total) + p)
                if repeat:
                    same = next_beams[prefix]
                    same[1] = _add(same[1], p_label + p)
        best = sorted(next_beams.items(), key=lambda item: ranked(*item), reverse=True)[:beam]
        beams = {prefix: (scores[0], scores[1]) for prefix, scores in best}

    def final(prefix: tuple[int, ...]) -> float:
        score = _add(*beams[prefix])
        if lm is not None:
            done, partial, part = words[prefix]
            if partial:
                if not lm.closes(partial):
                    return -math.inf
                part, done = part + lm.word(done, partial), (*done, partial)
            score += part + lm.end(done)
        return score

    results = [("".join(alphabet[c] for c in prefix), final(prefix)) for prefix in beams]
    return sorted([item for item in results if item[1] > -math.inf], key=lambda item: item[1], reverse=True)


def prefix_beam_decode(log_probs: torch.Tensor, alphabet: Sequence[str], beam: int = 16,
                       blank: int = 0, prune: float = -12.0, lm: LMFusion | None = None) -> str:
    """The best transcript of :func:`prefix_beam_search` ("" where a lexicon leaves it none)."""
    results = prefix_beam_search(log_probs, alphabet, beam, blank, prune, lm)
    return results[0][0] if results else ""
