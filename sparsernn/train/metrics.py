"""CTC decoding (greedy and prefix beam search) and error rates by edit distance."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch


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


def prefix_beam_decode(log_probs: torch.Tensor, alphabet: Sequence[str], beam: int = 16,
                       blank: int = 0, prune: float = -12.0) -> str:
    """CTC prefix beam search (Hannun et al. 2014, without a language model).

    Each prefix keeps the log-probability of all alignments that end in a blank and of those that
    end in its last label, so that alignments collapsing to the same text are summed, which greedy
    decoding does not do. Labels below ``prune`` (log-probability) at a frame are not extended.
    """
    frames = log_probs.double().tolist()
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # (blank, non-blank)
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
                extended = next_beams[(*prefix, c)]
                if prefix and prefix[-1] == c:
                    # A repeat extends only from a blank; without one it collapses into the prefix.
                    extended[1] = _add(extended[1], p_blank + p)
                    same = next_beams[prefix]
                    same[1] = _add(same[1], p_label + p)
                else:
                    extended[1] = _add(extended[1], total + p)
        best = sorted(next_beams.items(), key=lambda item: _add(*item[1]), reverse=True)[:beam]
        beams = {prefix: (scores[0], scores[1]) for prefix, scores in best}
    prefix = max(beams, key=lambda key: _add(*beams[key]))
    return "".join(alphabet[c] for c in prefix)
