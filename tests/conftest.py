"""Tiny generated corpora shared by the data, training and CLI tests."""

import random

import pytest

WORDS = "the cat sat on a mat and dog ran to red blue big small house tree".split()


def write_corpus(directory, lines=(300, 40, 40), seed=0):
    """A PTB-layout directory of random short sentences (words outside the vocabulary in test)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "valid", "test"), lines, strict=True):
        words = WORDS + (["zebra"] if split == "test" else [])
        text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
                         for _ in range(count))
        (directory / f"ptb.{split}.txt").write_text(text + "\n")
    return directory


@pytest.fixture
def corpus_dir(tmp_path):
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def tiny_config(corpus_dir):
    """Raw config for a model that trains in a second or two."""
    return {
        "data": {"path": str(corpus_dir), "batch_size": 4, "eval_batch_size": 4, "bptt": 8},
        "model": {"cell": "lstm", "embedding_size": 16, "hidden_size": 16, "layers": 2, "dropout": 0.1},
        "prune": {"method": "narang", "sparsity": 0.8, "start": 5, "ramp": 15, "end": 40, "freq": 5,
                  "per_gate": True},
        "train": {"optimizer": "sgd", "lr": 5.0, "epochs": 2, "eval_every": 20, "log_every": 5},
    }


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """best.pt of a tiny 80%-sparse LSTM trained by the loop on a generated corpus (session-wide)."""
    from sparsernn.config import RunConfig
    from sparsernn.train.loop import train

    root = tmp_path_factory.mktemp("trained")
    config = {
        "data": {"path": str(write_corpus(root / "corpus")), "batch_size": 4, "eval_batch_size": 4,
                 "bptt": 8},
        "model": {"cell": "lstm", "embedding_size": 16, "hidden_size": 16, "layers": 2, "dropout": 0.1},
        "prune": {"method": "narang", "sparsity": 0.8, "start": 5, "ramp": 15, "end": 40, "freq": 5,
                  "groups": ["recurrent", "linear", "embedding"]},
        "train": {"optimizer": "sgd", "lr": 5.0, "epochs": 2, "eval_every": 20, "log_every": 5},
    }
    train(RunConfig.model_validate(config), root / "run")
    return root / "run" / "checkpoints" / "best.pt"


# ---------------------------------------------------------------- speech

SPEECH_WORDS = ["ONE", "TWO", "SIX", "GO", "NO", "YES", "ERASE"]


def tone_utterance(text, rate=16000, seconds_per_char=0.07, seed=0):
    """Audio for a transcript: a tone per letter (its own frequency), silence for a space, faint noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = round(rate * seconds_per_char)
    t = np.arange(n) / rate
    pieces = [np.zeros(n) if c == " " else 0.5 * np.sin(2 * np.pi * (300 + 120 * (ord(c) - 65)) * t)
              for c in text]
    return (np.concatenate(pieces) + 0.01 * rng.standard_normal(n * len(text))).astype(np.float32)


def write_wav16(path, audio, rate=16000):
    import numpy as np
    import scipy.io.wavfile

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.wavfile.write(path, rate, (np.clip(audio, -1, 1) * 32767).astype(np.int16))


def write_an4(directory, speakers=(4, 2), per_speaker=4, seed=0):
    """An AN4-layout directory (etc/ listings, wav/ files) of tone utterances: train lines with
    <s> ... </s>, test lines without, as the real AN4 has."""
    rng = random.Random(seed)
    (directory / "etc").mkdir(parents=True, exist_ok=True)
    for split, folder, count in (("train", "an4_clstk", speakers[0]), ("test", "an4test_clstk", speakers[1])):
        ids, lines = [], []
        for s in range(count):
            speaker = f"{split[:2]}{s:02d}"
            for _ in range(per_speaker):
                text = " ".join(rng.choice(SPEECH_WORDS) for _ in range(rng.randint(1, 3)))
                utterance = f"an{len(ids) + 100 * s}-{speaker}-b"
                ids.append(f"{folder}/{speaker}/{utterance}")
                write_wav16(directory / "wav" / f"{ids[-1]}.wav", tone_utterance(text, seed=len(ids)))
                line = f"{text} ({utterance})"
                lines.append(f"<s> {text} </s> ({utterance})" if split == "train" else line)
        (directory / "etc" / f"an4_{split}.fileids").write_text("\n".join(ids) + "\n")
        (directory / "etc" / f"an4_{split}.transcription").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="session")
def an4_dir(tmp_path_factory):
    return write_an4(tmp_path_factory.mktemp("an4") / "an4")


def speech_config_for(an4_dir):
    """Raw config for a DS2 model that trains on the generated AN4 in a few seconds."""
    return {
        "data": {"kind": "an4", "path": str(an4_dir), "n_mels": 16, "batch_size": 4, "eval_batch_size": 4,
                 "valid_fraction": 0.25},
        "model": {"conv": [{"channels": 4, "kernel": [5, 5], "stride": [2, 2]}], "cell": "gru",
                  "hidden_size": 16, "layers": 2},
        "prune": {"method": "narang", "sparsity": 0.8, "start": 2, "ramp": 6, "end": 10, "freq": 2},
        "train": {"optimizer": "adam", "lr": 0.003, "clip": 5.0, "epochs": 4, "log_every": 2},
    }


@pytest.fixture
def speech_config(an4_dir):
    return speech_config_for(an4_dir)


SUBTYPES = {".wav": "PCM_16", ".flac": "PCM_16", ".ogg": "VORBIS", ".mp3": "MPEG_LAYER_III"}


def write_audio(path, audio, rate=16000):
    """Any format soundfile writes, chosen by the suffix (16-bit PCM for WAV and FLAC)."""
    import numpy as np
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    samples = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    soundfile.write(path, samples, rate, subtype=SUBTYPES[path.suffix])


def speech_utterances(speakers, per_speaker, seed=0):
    """(speaker, number, text, audio) of tone utterances, a few words each."""
    rng = random.Random(seed)
    for s in range(speakers):
        for u in range(per_speaker):
            text = " ".join(rng.choice(SPEECH_WORDS) for _ in range(rng.randint(1, 3)))
            yield s, u, text, tone_utterance(text, seed=100 * s + u)


def write_nemo(directory, suffix=".flac"):
    """NeMo manifests train.json / test.json (JSON lines: audio_filepath, text, duration, speaker)."""
    import json

    for split, speakers in (("train", 4), ("test", 2)):
        lines = []
        for s, u, text, audio in speech_utterances(speakers, 3, seed=len(split)):
            path = directory / "audio" / split / f"{s}-{u}{suffix}"
            write_audio(path, audio)
            lines.append(json.dumps({"audio_filepath": str(path.relative_to(directory)), "text": text.lower(),
                                     "duration": len(audio) / 16000, "speaker": s}))
        (directory / f"{split}.json").write_text("\n".join(lines) + "\n")
    return directory


def write_audiofolder(directory, suffix=".mp3"):
    """A Hugging Face audiofolder: train/ and test/, each with metadata.csv (file_name, transcription)."""
    for split, speakers in (("train", 4), ("test", 2)):
        rows = ["file_name,transcription"]
        for s, u, text, audio in speech_utterances(speakers, 3, seed=len(split)):
            write_audio(directory / split / f"{s}_{u}{suffix}", audio)
            rows.append(f"{s}_{u}{suffix},{text}")
        (directory / split / "metadata.csv").write_text("\n".join(rows) + "\n")
    return directory


def write_librispeech(directory):
    """LibriSpeech subsets train-clean/ and test-clean/: SPEAKER/CHAPTER/*.flac and *.trans.txt."""
    for split, speakers in (("train-clean", 4), ("test-clean", 2)):
        listings = {}
        for s, u, text, audio in speech_utterances(speakers, 3, seed=len(split)):
            speaker, chapter = 100 + s + (10 if split.startswith("test") else 0), 7
            folder = directory / split / str(speaker) / str(chapter)
            write_audio(folder / f"{speaker}-{chapter}-{u:04d}.flac", audio)
            listings.setdefault(folder / f"{speaker}-{chapter}.trans.txt", []).append(
                f"{speaker}-{chapter}-{u:04d} {text}")
        for path, lines in listings.items():
            path.write_text("\n".join(lines) + "\n")
    return directory


#: A toy language pair: each "German" word has one "English" word; sentences keep their word order.
TOY_LEXICON = {"der": "the", "hund": "dog", "katze": "cat", "läuft": "runs", "schläft": "sleeps",
               "rote": "red", "kleine": "small", "ball": "ball", "im": "in the", "park": "park",
               "haus": "house", "ein": "a", "mann": "man", "sieht": "sees"}


def write_parallel(directory, lines=(600, 40, 40), seed=0, gzip_files=True):
    """Multi30k-style files {train,val,test_2016_flickr}.{de,en}(.gz): toy sentences and translations."""
    import gzip

    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    words = sorted(TOY_LEXICON)
    for split, count in zip(("train", "val", "test_2016_flickr"), lines, strict=True):
        german = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 7))) for _ in range(count)]
        english = [" ".join(TOY_LEXICON[w] for w in line.split()).capitalize() + "." for line in german]
        for language, text in (("de", german), ("en", english)):
            data = ("\n".join(text) + "\n").encode()
            name = f"{split}.{language}"
            if gzip_files:
                (directory / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (directory / name).write_bytes(data)
    return directory


def translation_config_for(directory):
    """Raw config for a seq2seq model that learns the toy pair in a few seconds."""
    return {
        "data": {"kind": "translation", "path": str(directory), "vocab_size": 60, "batch_size": 16,
                 "eval_batch_size": 32, "max_output": 20},
        "model": {"cell": "gru", "embedding_size": 24, "hidden_size": 32, "dropout": 0.0},
        "prune": {"method": "narang", "sparsity": 0.5, "start": 20, "ramp": 40, "end": 80, "freq": 10},
        "train": {"optimizer": "adam", "lr": 0.01, "clip": 1.0, "epochs": 4, "log_every": 10},
    }


def metrics_without_timing(run_dir):
    """A run's metrics.jsonl records without the fields that measure time."""
    import json

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("step_time", None)
        record.pop("train_seconds", None)
    return records


def check_resume_is_exact(config, directory, monkeypatch, crash: int) -> int:
    """Train ``config`` straight into ``directory/straight``, and into ``directory/resumed`` stopped
    after optimizer step ``crash`` and resumed; both must end with the same weights, masks and metrics.
    Returns the step the stopped run had checkpointed."""
    import torch

    from sparsernn.checkpoint import load_checkpoint
    from sparsernn.prune import Pruner
    from sparsernn.train.loop import train

    train(config, directory / "straight")
    original = Pruner.step

    def crashing(self):
        original(self)
        if self.current_step == crash:
            raise KeyboardInterrupt

    monkeypatch.setattr(Pruner, "step", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(config, directory / "resumed")
    monkeypatch.setattr(Pruner, "step", original)
    checkpointed = load_checkpoint(directory / "resumed/checkpoints/last.pt")["loop"]["step"]
    train(config, directory / "resumed", resume=True)
    straight = load_checkpoint(directory / "straight/checkpoints/last.pt")
    resumed = load_checkpoint(directory / "resumed/checkpoints/last.pt")
    for part in ("model", "pruner.masks"):
        ours, theirs = straight, resumed
        for key in part.split("."):
            ours, theirs = ours[key], theirs[key]
        for name, value in ours.items():
            assert torch.equal(value, theirs[name]), f"{part}: {name}"
    assert metrics_without_timing(directory / "straight") == metrics_without_timing(directory / "resumed")
    return checkpointed
