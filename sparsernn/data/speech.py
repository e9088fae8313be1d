"""Speech for CTC: WAV reading, resampling, log-mel / log-spectrogram features, AN4 and manifest
datasets, length-sorted batches.

Every file is read and turned into features when the dataset loads, so a missing, corrupt, empty or
too-short file or a transcript with characters outside the alphabet stops the run before training
starts (``on_bad_audio: error``, naming the file and the line that lists it) or is skipped and
counted (``on_bad_audio: skip``). Never in the middle of an epoch.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io.wavfile
import scipy.signal
import torch

from sparsernn.config import SpeechDataConfig
from sparsernn.data.text import DataError, read_text

#: CTC blank at index 0, then space, apostrophe and the letters.
BLANK = "<blank>"
ALPHABET = (BLANK, " ", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


# ---------------------------------------------------------------- audio


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples as float32 in [-1, 1] mixed down to mono, and the sample rate.

    Reads 8-bit unsigned, 16/24/32-bit signed PCM (scipy returns 24-bit left-justified in int32) and
    32/64-bit float WAV.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.io.wavfile.WavFileWarning)
            rate, samples = scipy.io.wavfile.read(path)
    except FileNotFoundError:
        raise DataError(f"{path}: audio file not found") from None
    except Exception as error:  # noqa: BLE001 - scipy raises many kinds (even UnboundLocalError) on junk
        raise DataError(f"{path}: not a readable WAV file ({type(error).__name__}: {error})") from None
    if samples.dtype == np.uint8:
        audio = (samples.astype(np.float32) - 128.0) / 128.0
    elif samples.dtype == np.int16:
        audio = samples.astype(np.float32) / 32768.0
    elif samples.dtype == np.int32:
        audio = (samples.astype(np.float64) / 2.0 ** 31).astype(np.float32)
    elif samples.dtype in (np.float32, np.float64):
        audio = samples.astype(np.float32)
    else:
        raise DataError(f"{path}: unsupported WAV sample type {samples.dtype}")
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.size == 0:
        raise DataError(f"{path}: the audio is empty")
    return audio, int(rate)


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) from ``rate`` to ``target`` Hz."""
    if rate == target:
        return audio
    common = math.gcd(rate, target)
    return scipy.signal.resample_poly(audio, target // common, rate // common).astype(np.float32)


def mel_filterbank(n_mels: int, n_fft: int, rate: int) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, ``mel = 2595 log10(1 + f / 700)``: (n_mels, n_fft//2+1)."""
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def to_hz(mel):
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    edges = to_hz(np.linspace(0.0, to_mel(rate / 2), n_mels + 2))
    bins = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    return torch.from_numpy(np.maximum(0.0, np.minimum(rising, falling))).float()


def features(audio: np.ndarray, config: SpeechDataConfig) -> torch.Tensor:
    """Log-mel or log-spectrogram features, each bin normalized to zero mean and unit variance over
    the utterance (cepstral mean and variance normalization): (bins, frames)."""
    window = round(config.sample_rate * config.window_ms / 1000)
    hop = round(config.sample_rate * config.hop_ms / 1000)
    samples = torch.from_numpy(np.ascontiguousarray(audio))
    if len(samples) < window:
        samples = torch.nn.functional.pad(samples, (0, window - len(samples)))
    spectrum = torch.stft(samples, n_fft=window, hop_length=hop, window=torch.hann_window(window),
                          center=False, return_complex=True)
    power = spectrum.abs() ** 2  # (window // 2 + 1, frames)
    if config.features == "logmel":
        power = mel_filterbank(config.n_mels, window, config.sample_rate) @ power
    values = torch.log(power + 1e-10)
    mean = values.mean(dim=1, keepdim=True)
    deviation = values.std(dim=1, keepdim=True) if values.shape[1] > 1 else torch.ones_like(mean)
    return (values - mean) / (deviation + 1e-5)


def feature_size(config: SpeechDataConfig) -> int:
    window = round(config.sample_rate * config.window_ms / 1000)
    return config.n_mels if config.features == "logmel" else window // 2 + 1


def spec_augment(values: torch.Tensor, config: SpeechDataConfig, generator: torch.Generator) -> torch.Tensor:
    """SpecAugment frequency and time masking (Park et al. 2019) on (bins, frames), set to 0 (the mean)."""
    values = values.clone()
    for count, width, axis in ((config.freq_masks, config.freq_mask_width, 0),
                               (config.time_masks, config.time_mask_width, 1)):
        size = values.shape[axis]
        for _ in range(count):
            span = int(torch.randint(0, min(width, size) + 1, (), generator=generator))
            start = int(torch.randint(0, size - span + 1, (), generator=generator))
            values.narrow(axis, start, span).zero_()
    return values


# ---------------------------------------------------------------- transcripts and listings


def normalize_text(text: str) -> str:
    """Upper case, single spaces."""
    return " ".join(text.upper().split())


def encode_text(text: str, alphabet: tuple[str, ...] = ALPHABET) -> torch.Tensor:
    index = {symbol: i for i, symbol in enumerate(alphabet)}
    return torch.tensor([index[character] for character in text], dtype=torch.long)


def decode_labels(labels, alphabet: tuple[str, ...] = ALPHABET) -> str:
    return "".join(alphabet[int(label)] for label in labels)


def ctc_min_frames(labels: torch.Tensor) -> int:
    """The fewest output frames CTC needs: one per label plus a blank between repeated labels."""
    return len(labels) + int((labels[1:] == labels[:-1]).sum()) if len(labels) else 0


@dataclass(frozen=True)
class Entry:
    """One utterance as listed: audio path, transcript, speaker, and where it was listed."""

    audio: Path
    text: str
    speaker: str
    source: str  # "file:line"


def list_an4(root: Path, split: str) -> list[Entry]:
    """AN4's ``etc/an4_<split>.{fileids,transcription}``: line i of one is line i of the other."""
    ids_path, text_path = root / "etc" / f"an4_{split}.fileids", root / "etc" / f"an4_{split}.transcription"
    for path in (ids_path, text_path):
        if not path.exists():
            raise DataError(f"{path}: AN4 listing not found (data.path should be the AN4 root)")
    ids, lines = ids_path.read_text().split(), text_path.read_text().splitlines()
    lines = [line for line in lines if line.strip()]
    if len(ids) != len(lines):
        raise DataError(f"{text_path}: {len(lines)} transcripts for {len(ids)} file ids in {ids_path}")
    entries = []
    for number, (file_id, line) in enumerate(zip(ids, lines, strict=True), start=1):
        text = line.rsplit("(", 1)[0].replace("<s>", "").replace("</s>", "")
        entries.append(Entry(root / "wav" / f"{file_id}.wav", normalize_text(text),
                             speaker=Path(file_id).parent.name, source=f"{text_path}:{number}"))
    return entries


def list_manifest(path: Path) -> list[Entry]:
    """A CSV (header with ``audio`` and ``text`` columns) or JSONL (objects with ``audio`` and ``text``)
    manifest; an optional ``speaker`` column. Audio paths are relative to the manifest."""
    if path.suffix not in (".csv", ".jsonl"):
        raise DataError(f"{path}: manifest must be .csv or .jsonl")
    raw = read_text(path)
    rows: list[tuple[int, dict]] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(raw.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    else:
        reader = csv.DictReader(raw.splitlines())
        rows = [(number, row) for number, row in enumerate(reader, start=2)]
    entries = []
    for number, row in rows:
        if not isinstance(row, dict) or not all(isinstance(row.get(key), str) for key in ("audio", "text")):
            raise DataError(f"{path}:{number}: needs string fields 'audio' and 'text'")
        audio = path.parent / row["audio"]
        entries.append(Entry(audio, normalize_text(row["text"]), str(row.get("speaker") or audio),
                             f"{path}:{number}"))
    if not entries:
        raise DataError(f"{path}: the manifest lists no utterances")
    return entries


def hold_out_speakers(entries: list[Entry], fraction: float, seed: int) -> tuple[list[Entry], list[Entry]]:
    """Split by speaker: ``ceil(fraction * speakers)`` speakers, drawn with ``seed``, for validation."""
    speakers = sorted({entry.speaker for entry in entries})
    if len(speakers) < 2:
        raise DataError(f"{entries[0].source.rsplit(':', 1)[0]}: need at least two speakers to hold "
                        "some out for validation; give a validation manifest (data.valid)")
    order = torch.randperm(len(speakers), generator=torch.Generator().manual_seed(seed)).tolist()
    held = {speakers[i] for i in order[:min(len(speakers) - 1, math.ceil(fraction * len(speakers)))]}
    return ([e for e in entries if e.speaker not in held], [e for e in entries if e.speaker in held])


# ---------------------------------------------------------------- datasets and batches


@dataclass
class SpeechSet:
    """Features and labels of one split, and what was skipped while loading it."""

    ids: list[str]
    features: list[torch.Tensor]  # (bins, frames) each
    labels: list[torch.Tensor]  # (characters,) each
    texts: list[str]
    sources: list[str]  # where each utterance is listed ("file:line")
    skipped: list[str] = field(default_factory=list)  # "source: reason"

    def __len__(self) -> int:
        return len(self.ids)

    def seconds(self, hop_ms: float) -> float:
        return sum(f.shape[1] for f in self.features) * hop_ms / 1000


def load_entries(entries: list[Entry], config: SpeechDataConfig) -> SpeechSet:
    """Read, check and featurize every entry; bad ones raise or are skipped per ``on_bad_audio``."""
    data = SpeechSet([], [], [], [], [])
    for entry in entries:
        try:
            bad = [c for c in dict.fromkeys(entry.text) if c not in ALPHABET[1:]]
            if bad:
                raise DataError(f"characters outside the alphabet: {''.join(bad)!r}")
            if not entry.text:
                raise DataError("empty transcript")
            audio, rate = read_wav(entry.audio)
            values = features(resample(audio, rate, config.sample_rate), config)
        except DataError as error:
            reason = str(error)
            if config.on_bad_audio == "error":
                raise DataError(f"{entry.source}: {reason} (data.on_bad_audio: skip to skip such "
                                "utterances)") from None
            data.skipped.append(f"{entry.source}: {reason}")
            continue
        data.ids.append(entry.audio.stem)
        data.features.append(values)
        data.labels.append(encode_text(entry.text))
        data.texts.append(entry.text)
        data.sources.append(entry.source)
    return data


def drop_too_short(data: SpeechSet, output_frames, on_bad_audio: str) -> SpeechSet:
    """Drop (or refuse) utterances whose model output is shorter than CTC needs for their transcript.

    ``output_frames(frames) -> int`` is the model's output length for an input length.
    """
    keep = []
    for i, (values, labels) in enumerate(zip(data.features, data.labels, strict=True)):
        frames, needed = output_frames(values.shape[1]), ctc_min_frames(labels)
        if frames >= needed:
            keep.append(i)
            continue
        reason = (f"{data.sources[i]}: {data.ids[i]}: audio too short for its transcript ({frames} "
                  f"output frames, CTC needs {needed})")
        if on_bad_audio == "error":
            raise DataError(f"{reason} (data.on_bad_audio: skip to skip such utterances)")
        data.skipped.append(reason)
    return SpeechSet(*([column[i] for i in keep] for column in
                       (data.ids, data.features, data.labels, data.texts, data.sources)), data.skipped)


def load_speech(config: SpeechDataConfig, seed: int = 0,
                splits=("train", "valid", "test")) -> dict[str, SpeechSet]:
    """The train / valid / test sets a speech data config names (only those in ``splits``)."""
    root = Path(config.path)
    if config.kind == "an4":
        if not root.is_dir():
            raise DataError(f"{root}: AN4 directory not found")
        train, valid = hold_out_speakers(list_an4(root, "train"), config.valid_fraction, seed)
        listed = {"train": train, "valid": valid, "test": list_an4(root, "test")}
    else:
        listed = {"train": list_manifest(root)}
        if config.valid is not None:
            listed["valid"] = list_manifest(Path(config.valid))
        else:
            listed["train"], listed["valid"] = hold_out_speakers(listed["train"], config.valid_fraction, seed)
        listed["test"] = list_manifest(Path(config.test)) if config.test is not None else []
    return {split: load_entries(listed[split], config) for split in splits}


@dataclass
class SpeechBatch:
    features: torch.Tensor  # (B, bins, frames), zero-padded
    lengths: torch.Tensor  # (B,) frames
    labels: torch.Tensor  # (sum of label lengths,) concatenated, as CTC takes them
    label_lengths: torch.Tensor  # (B,)
    indices: list[int]  # positions in the set

    def to(self, device: torch.device) -> SpeechBatch:
        return SpeechBatch(self.features.to(device), self.lengths.to(device), self.labels.to(device),
                           self.label_lengths.to(device), self.indices)


def collate(data: SpeechSet, indices: list[int], augment=None) -> SpeechBatch:
    values = [data.features[i] for i in indices]
    if augment is not None:
        values = [augment(v) for v in values]
    lengths = torch.tensor([v.shape[1] for v in values])
    padded = torch.zeros(len(values), values[0].shape[0], int(lengths.max()))
    for row, v in enumerate(values):
        padded[row, :, :v.shape[1]] = v
    labels = [data.labels[i] for i in indices]
    return SpeechBatch(padded, lengths, torch.cat(labels), torch.tensor([len(x) for x in labels]), indices)


def length_sorted_batches(data: SpeechSet, batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    """Utterances sorted by length, cut into batches; the batch order is shuffled per epoch except the
    first, which goes shortest first (SortaGrad, Amodei et al. 2016)."""
    order = sorted(range(len(data)), key=lambda i: (data.features[i].shape[1], i))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if epoch == 0:
        return batches
    permutation = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return [batches[i] for i in permutation.tolist()]


def iterate(data: SpeechSet, batch_size: int) -> Iterator[SpeechBatch]:
    """Length-sorted batches of a set, in order (for evaluation)."""
    for indices in length_sorted_batches(data, batch_size, 0, 0):
        yield collate(data, indices)
