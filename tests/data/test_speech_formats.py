"""Speech data as people have it: FLAC, OGG and MP3 audio, segments, NeMo and Hugging Face audiofolder
manifests, the LibriSpeech layout, and every bad input among them."""

import json

import numpy as np
import pytest
import scipy.io.wavfile
import soundfile

from sparsernn.config import SpeechDataConfig
from sparsernn.data import speech
from sparsernn.data.speech import DataError
from tests.conftest import tone_utterance, write_audio, write_audiofolder, write_librispeech, write_nemo


def config(path, **fields):
    return SpeechDataConfig(kind=fields.pop("kind", "manifest"), path=path, n_mels=16, **fields)


def test_wav_reads_as_before_and_flac_gives_the_same_features(tmp_path):
    ints = (tone_utterance("ONE TWO", seed=1) * 32767).astype(np.int16)
    scipy.io.wavfile.write(tmp_path / "a.wav", 16000, ints)
    soundfile.write(tmp_path / "a.flac", ints, 16000, subtype="PCM_16")
    wav, rate = speech.read_audio(tmp_path / "a.wav")
    assert rate == 16000 and np.array_equal(wav, ints.astype(np.float32) / 32768.0)  # the old WAV scaling
    flac, _ = speech.read_audio(tmp_path / "a.flac")
    assert np.array_equal(flac, wav)  # lossless
    settings = config(tmp_path)
    assert np.array_equal(speech.features(flac, settings).numpy(), speech.features(wav, settings).numpy())


@pytest.mark.parametrize("suffix", [".ogg", ".mp3"])
def test_lossy_formats_decode_close_to_the_source(tmp_path, suffix):
    audio = tone_utterance("YES NO", seed=2)
    write_audio(tmp_path / f"a{suffix}", audio)
    decoded, rate = speech.read_audio(tmp_path / f"a{suffix}")
    assert rate == 16000 and abs(len(decoded) - len(audio)) <= 1152  # at most an MP3 frame of padding
    n = min(len(decoded), len(audio))
    assert np.corrcoef(decoded[:n], audio[:n])[0, 1] > 0.99
    settings = config(tmp_path)
    ours, source = speech.features(decoded, settings), speech.features(audio, settings)
    frames = min(ours.shape[1], source.shape[1])
    assert float((ours[:, :frames] - source[:, :frames]).abs().mean()) < 0.3  # features of unit variance


def test_segments_and_their_errors(tmp_path):
    audio = tone_utterance("GO SIX")
    write_audio(tmp_path / "long.flac", audio)
    whole, _ = speech.read_audio(tmp_path / "long.flac")
    part, _ = speech.read_audio(tmp_path / "long.flac", offset=0.1, duration=0.2)
    assert np.array_equal(part, whole[1600:4800])
    assert np.array_equal(speech.read_audio(tmp_path / "long.flac", offset=0.3)[0], whole[4800:])
    with pytest.raises(DataError, match=r"long.flac: offset 9 s lies past the end \(0.42 s\)"):
        speech.read_audio(tmp_path / "long.flac", offset=9)
    (tmp_path / "junk.flac").write_bytes(b"fLaC" + bytes(60))
    with pytest.raises(DataError, match="junk.flac: not a readable FLAC file"):
        speech.read_audio(tmp_path / "junk.flac")
    (tmp_path / "junk.mp3").write_bytes(b"not audio at all" * 4)
    with pytest.raises(DataError, match="junk.mp3: not a readable MP3 file"):
        speech.read_audio(tmp_path / "junk.mp3")


def test_nemo_manifest(tmp_path):
    write_nemo(tmp_path)
    entries = speech.list_manifest(tmp_path / "train.json")
    assert len(entries) == 12 and entries[0].audio == tmp_path / "audio/train/0-0.flac"
    assert entries[0].speaker == "0" and entries[0].text == entries[0].text.upper()
    assert entries[0].duration == pytest.approx(len(speech.read_audio(entries[0].audio)[0]) / 16000)
    absolute = tmp_path / "audio/train/1-1.flac"
    rows = [{"audio_filepath": str(absolute), "text": "go", "offset": 0.05, "duration": 0.1},
            {"audio_filepath": "audio/train/1-2.flac", "text": "no"}]
    (tmp_path / "segments.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    first, second = speech.list_manifest(tmp_path / "segments.jsonl")  # NeMo fields in a .jsonl file
    assert first.audio == absolute and (first.offset, first.duration) == (0.05, 0.1)
    assert second.offset == 0.0 and second.duration is None and second.speaker == str(second.audio)
    data = speech.load_entries([first], config(tmp_path))
    assert data.features[0].shape[1] == 9 and data.ids == ["1-1@0.05s"]  # 1600 samples: 9 frames
    bad = {"audio_filepath": "a.flac", "text": "x", "offset": "soon"}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"bad.json:1: offset must be a number of seconds, got 'soon'"):
        speech.list_manifest(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"wav": "a.flac", "words": "x"}))
    with pytest.raises(DataError, match=r"other.json:1: unknown manifest layout, fields \['wav', 'words'\]"):
        speech.list_manifest(tmp_path / "other.json")
    with pytest.raises(DataError, match=r"other.json:1: needs string fields 'audio_filepath' and 'text'"):
        speech.list_manifest(tmp_path / "other.json", "nemo")


def test_audiofolder(tmp_path):
    write_audiofolder(tmp_path, ".wav")
    by_folder = speech.list_manifest(tmp_path / "train")
    assert by_folder == speech.list_manifest(tmp_path / "train/metadata.csv")
    assert len(by_folder) == 12 and by_folder[0].audio == tmp_path / "train/0_0.wav"
    (tmp_path / "text.csv").write_text("file_name,text\ntrain/0_0.wav,Go\n")
    assert speech.list_manifest(tmp_path / "text.csv")[0].text == "GO"
    (tmp_path / "neither.csv").write_text("file_name,label\ntrain/0_0.wav,1\n")
    with pytest.raises(DataError, match=r"neither.csv:2: needs string fields 'file_name' and 'transcription' "
                                        r"or 'text'"):
        speech.list_manifest(tmp_path / "neither.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: a folder without metadata.csv"):
        speech.list_manifest(tmp_path / "empty")


def test_librispeech_layout(tmp_path):
    write_librispeech(tmp_path)
    entries = speech.list_librispeech(tmp_path / "train-clean")
    assert len(entries) == 12 and {e.speaker for e in entries} == {"100", "101", "102", "103"}
    assert entries[0].audio == tmp_path / "train-clean/100/7/100-7-0000.flac"
    assert entries[0].source == f"{tmp_path / 'train-clean/100/7/100-7.trans.txt'}:1"
    sets = speech.load_speech(config(tmp_path / "train-clean", kind="librispeech",
                                     test=tmp_path / "test-clean", valid_fraction=0.25))
    assert (len(sets["train"]), len(sets["valid"]), len(sets["test"])) == (9, 3, 6)
    listing = tmp_path / "train-clean/101/7/101-7.trans.txt"
    listing.write_text(listing.read_text() + "101-7-0009 GO\n")  # no such file
    with pytest.raises(DataError, match=r"101-7.trans.txt:4: .*101-7-0009.flac: audio file not found"):
        speech.load_speech(config(tmp_path / "train-clean", kind="librispeech"))
    listing.write_text("101-7-0000\n")
    with pytest.raises(DataError, match=r"101-7.trans.txt:1: expected 'UTTERANCE-ID TRANSCRIPT'"):
        speech.list_librispeech(tmp_path / "train-clean")
    with pytest.raises(DataError, match="no SPEAKER/CHAPTER/\\*.trans.txt listings"):
        speech.list_librispeech(tmp_path)
    with pytest.raises(DataError, match="LibriSpeech folder not found"):
        speech.list_librispeech(tmp_path / "absent")
