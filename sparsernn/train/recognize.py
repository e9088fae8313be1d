"""Using a trained CTC speech model: CER and WER on a split (greedy and beam), transcripts of audio files."""

from __future__ import annotations

from pathlib import Path

import torch

from sparsernn.data import speech
from sparsernn.train.evaluate import load_trained, model_summary
from sparsernn.train.metrics import error_rates, greedy_decode, prefix_beam_decode


@torch.no_grad()
def recognize(model, data: speech.SpeechSet, vocabulary, batch_size: int, beam: int) -> dict[str, list[str]]:
    """Greedy and (with ``beam`` > 0) prefix-beam transcripts of every utterance, in set order."""
    greedy, beamed = [""] * len(data), [""] * len(data)
    for batch in speech.iterate(data, batch_size):
        log_probs, lengths = model(batch.features, batch.lengths)
        for row, index in enumerate(batch.indices):
            frames = log_probs[:lengths[row], row]
            greedy[index] = greedy_decode(frames, vocabulary)
            if beam > 0:
                beamed[index] = prefix_beam_decode(frames, vocabulary, beam)
    return {"greedy": greedy, "beam": beamed}


def evaluate_speech(path: str | Path, split: str = "test", beam: int = 16) -> dict:
    """CER and WER of a saved speech model on a split of the data it was trained on."""
    model, config, vocabulary, checkpoint = load_trained(path, speech=True)
    data = speech.load_speech(config.data, config.train.seed, splits=(split,))[split]
    data = speech.drop_too_short(data, model.output_lengths, config.data.on_bad_audio)
    if len(data) == 0:
        raise speech.DataError(f"{config.data.path}: the {split} split has no usable utterances")
    out = recognize(model, data, vocabulary, config.data.eval_batch_size, beam)
    result = {"split": split, "utterances": len(data), "skipped": len(data.skipped),
              **model_summary(model, checkpoint), "beam_width": beam}
    for name, hypotheses in out.items():
        if name == "beam" and beam == 0:
            continue
        rates = error_rates(data.texts, hypotheses)
        result[f"cer_{name}"], result[f"wer_{name}"] = rates["cer"], rates["wer"]
    return result


def transcribe(path: str | Path, files: list[str | Path], beam: int = 16) -> list[str]:
    """One transcript per audio file (any format :func:`~sparsernn.data.speech.read_audio` reads), by
    prefix beam search (greedy with ``beam`` 0)."""
    model, config, vocabulary, _ = load_trained(path, speech=True)
    transcripts = []
    with torch.no_grad():
        for file in files:
            audio, rate = speech.read_audio(file)
            values = speech.features(speech.resample(audio, rate, config.data.sample_rate), config.data)
            log_probs, lengths = model(values[None], torch.tensor([values.shape[1]]))
            frames = log_probs[:lengths[0], 0]
            transcripts.append(prefix_beam_decode(frames, vocabulary, beam) if beam > 0
                               else greedy_decode(frames, vocabulary))
    return transcripts
