"""Using a trained CTC speech model: CER and WER on a split (greedy, beam, and beam with a word n-gram
language model), the LM's weights tuned on the validation split, transcripts of audio files."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import torch

from sparsernn import ngram
from sparsernn.data import speech
from sparsernn.ngram import NgramLM
from sparsernn.train.evaluate import load_trained, model_summary
from sparsernn.train.metrics import LMFusion, error_rates, greedy_decode, prefix_beam_decode

#: The grid ``sparsernn lm tune`` searches by default.
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
BETAS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0)


def transcripts_lm(data_config, order: int) -> ngram.NgramModel:
    """A word n-gram model of a speech data config's training transcripts (validation speakers left
    out, as the model being decoded was trained)."""
    lines = [entry.text for entry in speech.list_speech(data_config)["train"]]
    return ngram.build(ngram.tokenize(lines), order)


def load_lm(path: str | Path, vocabulary, alpha: float, beta: float, lexicon: bool = False) -> LMFusion:
    """An ARPA model checked against the speech model's alphabet, with its fusion weights (and, with
    ``lexicon``, transcripts kept to its words)."""
    lm = NgramLM.load(path)
    lm.check_alphabet(vocabulary, str(path))
    return LMFusion(lm, alpha, beta, lexicon)


@torch.no_grad()
def frames_of(model, data: speech.SpeechSet, batch_size: int) -> list[torch.Tensor]:
    """Each utterance's CTC log-probabilities (T', alphabet), in set order."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(data)
    for batch in speech.iterate(data, batch_size):
        log_probs, lengths = model(batch.features, batch.lengths)
        for row, index in enumerate(batch.indices):
            out[index] = log_probs[:lengths[row], row]
    return out


def decode_all(frames: list[torch.Tensor], vocabulary, beam: int, lm: LMFusion | None = None
               ) -> tuple[list[str], float]:
    """Transcripts (greedy for ``beam`` 0) and the seconds the search took."""
    started = time.perf_counter()
    texts = [prefix_beam_decode(f, vocabulary, beam, lm=lm) if beam > 0 else greedy_decode(f, vocabulary)
             for f in frames]
    return texts, time.perf_counter() - started


def load_split(config, model, split: str) -> speech.SpeechSet:
    data = speech.load_speech(config.data, splits=(split,))[split]
    data = speech.drop_too_short(data, model.output_lengths, config.data.on_bad_audio)
    if len(data) == 0:
        raise speech.DataError(f"{config.data.path}: the {split} split has no usable utterances")
    return data


def evaluate_speech(path: str | Path, split: str = "test", beam: int = 16, lm: str | Path | None = None,
                    alpha: float = 0.5, beta: float = 1.0, lexicon: bool = False) -> dict:
    """CER and WER of a saved speech model on a split of the data it was trained on: greedy, with
    prefix beam search of width ``beam`` and (given an ARPA file ``lm``) with the LM fused (``lexicon``:
    its words only); with the search's real-time factor (decoding seconds per second of audio, the
    network excluded)."""
    model, config, vocabulary, checkpoint = load_trained(path, speech=True)
    fusion = load_lm(lm, vocabulary, alpha, beta, lexicon) if lm is not None else None
    data = load_split(config, model, split)
    frames = frames_of(model, data, config.data.eval_batch_size)
    result = {"split": split, "utterances": len(data), "skipped": len(data.skipped),
              "audio_seconds": data.seconds(config.data.hop_ms), **model_summary(model, checkpoint),
              "beam_width": beam}
    searches = {"greedy": (0, None)}
    if beam > 0:
        searches["beam"] = (beam, None)
        if fusion is not None:
            searches["lm"] = (beam, fusion)
            result |= {"lm": str(lm), "lm_order": fusion.lm.order, "alpha": alpha, "beta": beta,
                       "lexicon": lexicon}
    return result | search_rates(frames, data, vocabulary, searches, config.data.hop_ms)


def search_rates(frames: list[torch.Tensor], data: speech.SpeechSet, vocabulary,
                 searches: dict[str, tuple[int, LMFusion | None]], hop_ms: float) -> dict:
    """``cer_NAME``, ``wer_NAME`` and ``rtf_NAME`` (the search's seconds per second of audio) of each
    search ``NAME: (beam width, LM or None)`` over the frames of ``data``."""
    audio, result = data.seconds(hop_ms), {}
    for name, (width, fusion) in searches.items():
        hypotheses, seconds = decode_all(frames, vocabulary, width, fusion)
        rates = error_rates(data.texts, hypotheses)
        result |= {f"cer_{name}": rates["cer"], f"wer_{name}": rates["wer"], f"rtf_{name}": seconds / audio}
    return result


def tune_lm(path: str | Path, lm: str | Path, beam: int = 16, alphas=ALPHAS, betas=BETAS,
            progress=None, lexicon: bool = False) -> dict:
    """The LM weights (alpha, beta) with the lowest WER on the validation split (ties: lower CER), and
    every point of the grid (``lexicon``: searching the LM's words only). The test split is never read."""
    model, config, vocabulary, _ = load_trained(path, speech=True)
    language_model = load_lm(lm, vocabulary, 0.0, 0.0).lm  # checked before any decoding
    data = load_split(config, model, "valid")
    frames = frames_of(model, data, config.data.eval_batch_size)
    grid = []
    for alpha, beta in itertools.product(alphas, betas):
        hypotheses, _ = decode_all(frames, vocabulary, beam, LMFusion(language_model, alpha, beta, lexicon))
        grid.append({"alpha": alpha, "beta": beta, **error_rates(data.texts, hypotheses)})
        if progress is not None:
            progress(grid[-1])
    best = min(grid, key=lambda point: (point["wer"], point["cer"]))
    return {"alpha": best["alpha"], "beta": best["beta"], "wer": best["wer"], "cer": best["cer"],
            "utterances": len(data), "beam_width": beam, "grid": grid}


def transcribe(path: str | Path, files: list[str | Path], beam: int = 16, lm: str | Path | None = None,
               alpha: float = 0.5, beta: float = 1.0, lexicon: bool = False) -> list[str]:
    """One transcript per audio file (any format :func:`~sparsernn.data.speech.read_audio` reads), by
    prefix beam search (greedy with ``beam`` 0), with an ARPA language model fused if given (``lexicon``:
    its words only)."""
    model, config, vocabulary, _ = load_trained(path, speech=True)
    fusion = load_lm(lm, vocabulary, alpha, beta, lexicon) if lm is not None else None
    transcripts = []
    with torch.no_grad():
        for file in files:
            audio, rate = speech.read_audio(file)
            values = speech.features(speech.resample(audio, rate, config.data.sample_rate), config.data)
            log_probs, lengths = model(values[None], torch.tensor([values.shape[1]]))
            frames = log_probs[:lengths[0], 0]
            transcripts.append(prefix_beam_decode(frames, vocabulary, beam, lm=fusion) if beam > 0
                               else greedy_decode(frames, vocabulary))
    return transcripts
