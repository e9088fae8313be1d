"""Speech for CTC: audio reading, resampling, log-mel / log-spectrogram features, the AN4 and
LibriSpeech layouts and manifests (CSV/JSONL, NeMo, Hugging Face audiofolder), length-sorted batches.

Every file is read and turned into features when the dataset loads, so a missing, corrupt, empty or
too-short file or a transcript with characters outside the alphabet stops the run before training
starts (``on_bad_audio: error``, naming the file and the line that lists it) or is skipped and
counted (``on_bad_audio: skip``). Never in the middle of an epoch.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile
import torch

from sparsernn.config import SpeechDataConfig
from sparsernn.data.text import DataError, read_text

#: CTC blank at index 0, then space, apostrophe and the letters.
BLANK = "<blank>"
ALPHABET = (BLANK, " ", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


# ---------------------------------------------------------------- audio


def read_audio(path: str | Path, offset: float = 0.0,
               duration: float | None = None) -> tuple[np.ndarray, int]:
    """Samples as float32 in [-1, 1] mixed down to mono, and the sample rate.

    Reads what libsndfile reads, through soundfile: WAV (8-bit unsigned, 16/24/32-bit PCM, 32/64-bit
    float), FLAC, OGG/Vorbis and Opus, MP3, AIFF and more. ``offset`` and ``duration`` (seconds) select a
    segment of a longer file, as NeMo manifests do.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file not found")
    kind = path.suffix.lstrip(".").upper() or "audio"
    try:
        with soundfile.SoundFile(str(path)) as file:
            rate, start = file.samplerate, round(offset * file.samplerate)
            if start and start >= file.frames:
                raise DataError(f"{path}: offset {offset:g} s lies past the end ({file.frames / rate:.2f} s)")
            if start:
                file.seek(start)
            frames = -1 if duration is None else round(duration * rate)
            samples = file.read(frames, dtype="float32", always_2d=True)  # (frames, channels)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, OSError) as error:
        raise DataError(f"{path}: not a readable {kind} file ({error})") from None
    audio = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if audio.size == 0:
        raise DataError(f"{path}: the audio is empty")
    return np.ascontiguousarray(audio, dtype=np.float32), int(rate)


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
    """One utterance as listed: audio path (and segment), transcript, speaker, and where it was listed."""

    audio: Path
    text: str
    speaker: str
    source: str  # "file:line"
    offset: float = 0.0  # seconds into the file
    duration: float | None = None  # seconds from the offset; None: to the end

    @property
    def id(self) -> str:
        return self.audio.stem if not self.offset else f"{self.audio.stem}@{self.offset:g}s"


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


#: Manifest layouts: the fields each needs (audio path, transcript) and the optional ones it may have.
MANIFEST_FIELDS = {
    "csv": ("audio", "text"),  # .csv with a header; optional speaker
    "jsonl": ("audio", "text"),  # JSON lines; optional speaker
    "nemo": ("audio_filepath", "text"),  # NeMo: JSON lines (.json); optional duration, offset, speaker
    "audiofolder": ("file_name", "transcription"),  # Hugging Face metadata.csv; or file_name, text
}
_LAYOUTS = ("audio + text (CSV or JSON lines), audio_filepath + text (NeMo), "
            "file_name + transcription or text (Hugging Face audiofolder metadata.csv)")


def _manifest_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, fields) of each row of a CSV file with a header, or of a JSON-lines file."""
    raw = read_text(path)
    if path.suffix == ".csv":
        return [(number, row) for number, row in enumerate(csv.DictReader(raw.splitlines()), start=2)]
    rows = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if line.strip():
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    return rows


def _detect_layout(path: Path, number: int, row) -> str:
    keys = set(row) if isinstance(row, dict) else set()
    if "audio_filepath" in keys:
        return "nemo"
    if "file_name" in keys:
        return "audiofolder"
    if "audio" in keys:
        return "csv" if path.suffix == ".csv" else "jsonl"
    raise DataError(f"{path}:{number}: unknown manifest layout, fields {sorted(keys)}; expected {_LAYOUTS} "
                    "(or set data.manifest_format)")


def _segment(path: Path, number: int, row: dict, key: str) -> float | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{path}:{number}: {key} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise DataError(f"{path}:{number}: {key} must be a number of seconds >= 0, got {value!r}")
    return value


def list_manifest(path: Path, layout: str = "auto") -> list[Entry]:
    """The utterances a manifest lists. ``layout`` is one of :data:`MANIFEST_FIELDS` or ``"auto"``
    (from the fields of the first row). ``path`` may be a folder holding a ``metadata.csv`` (a Hugging
    Face audiofolder). Relative audio paths resolve against the manifest's folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / "metadata.csv").is_file():
            raise DataError(f"{path}: a folder without metadata.csv; give a manifest file or an audiofolder")
        path = path / "metadata.csv"
    if path.suffix not in (".csv", ".jsonl", ".json"):
        raise DataError(f"{path}: manifest must be .csv, .jsonl or .json (NeMo), or an audiofolder's "
                        "metadata.csv")
    rows = _manifest_rows(path)
    if not rows:
        raise DataError(f"{path}: the manifest lists no utterances")
    if layout == "auto":
        layout = _detect_layout(path, *rows[0])
    audio_key, text_key = MANIFEST_FIELDS[layout]
    entries = []
    for number, row in rows:
        text = row.get(text_key) if isinstance(row, dict) else None
        if layout == "audiofolder" and text is None:
            text = row.get("text")
        if not isinstance(row, dict) or not isinstance(row.get(audio_key), str) or not isinstance(text, str):
            wanted = "'file_name' and 'transcription' or 'text'" if layout == "audiofolder" else \
                f"'{audio_key}' and '{text_key}'"
            raise DataError(f"{path}:{number}: needs string fields {wanted} ({layout} manifest)")
        audio = path.parent / row[audio_key]  # an absolute path stays as it is
        speaker = row.get("speaker")
        speaker = str(audio) if speaker in (None, "") else str(speaker)  # unknown: each file its own
        offset, duration = (_segment(path, number, row, key) for key in ("offset", "duration"))
        entries.append(Entry(audio, normalize_text(text), speaker, f"{path}:{number}", offset or 0.0,
                             duration))
    return entries


def list_librispeech(root: Path) -> list[Entry]:
    """An unpacked LibriSpeech subset: ``SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt``, whose lines are
    ``SPEAKER-CHAPTER-UTTERANCE TRANSCRIPT``, beside ``SPEAKER-CHAPTER-UTTERANCE.flac``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: LibriSpeech folder not found")
    listings = sorted(root.glob("*/*/*.trans.txt"))
    if not listings:
        raise DataError(f"{root}: no SPEAKER/CHAPTER/*.trans.txt listings; data.path should be an unpacked "
                        "subset such as LibriSpeech/train-clean-100")
    entries = []
    for listing in listings:
        for number, line in enumerate(read_text(listing).splitlines(), start=1):
            if not line.strip():
                continue
            utterance, _, text = line.strip().partition(" ")
            if not text.strip():
                raise DataError(f"{listing}:{number}: expected 'UTTERANCE-ID TRANSCRIPT'")
            entries.append(Entry(listing.parent / f"{utterance}.flac", normalize_text(text),
                                 speaker=listing.parent.parent.name, source=f"{listing}:{number}"))
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
            audio, rate = read_audio(entry.audio, entry.offset, entry.duration)
            values = features(resample(audio, rate, config.sample_rate), config)
        except DataError as error:
            reason = str(error)
            if config.on_bad_audio == "error":
                raise DataError(f"{entry.source}: {reason} (data.on_bad_audio: skip to skip such "
                                "utterances)") from None
            data.skipped.append(f"{entry.source}: {reason}")
            continue
        data.ids.append(entry.id)
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


def list_speech(config: SpeechDataConfig) -> dict[str, list[Entry]]:
    """The utterances of the train / valid / test splits a speech data config names (no audio read);
    held-out validation speakers are drawn with ``config.valid_seed``."""
    root = Path(config.path)
    if config.kind == "an4":
        if not root.is_dir():
            raise DataError(f"{root}: AN4 directory not found")
        train, valid = hold_out_speakers(list_an4(root, "train"), config.valid_fraction, config.valid_seed)
        return {"train": train, "valid": valid, "test": list_an4(root, "test")}

    def lister(path):
        if config.kind == "librispeech":
            return list_librispeech(path)
        return list_manifest(path, config.manifest_format)

    listed = {"train": lister(root)}
    if config.valid is not None:
        listed["valid"] = lister(Path(config.valid))
    else:
        listed["train"], listed["valid"] = hold_out_speakers(listed["train"], config.valid_fraction,
                                                             config.valid_seed)
    listed["test"] = lister(Path(config.test)) if config.test is not None else []
    return listed


def load_speech(config: SpeechDataConfig, splits=("train", "valid", "test")) -> dict[str, SpeechSet]:
    """The train / valid / test sets a speech data config names (only those in ``splits``)."""
    listed = list_speech(config)
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
