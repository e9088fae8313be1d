import json
import math
import wave

import numpy as np
import pytest
import scipy.io.wavfile
import torch

from sparsernn.config import SpeechDataConfig
from sparsernn.data import speech
from sparsernn.data.speech import DataError
from tests.conftest import tone_utterance, write_wav16


def config(path, **fields):
    return SpeechDataConfig(kind=fields.pop("kind", "manifest"), path=path, **fields)


# ---------------------------------------------------------------- audio


def test_read_audio_scales_every_sample_format_and_mixes_down(tmp_path):
    signal = np.array([0.0, 0.5, -0.5, 0.25], dtype=np.float32)
    cases = {
        "u8": ((signal * 128 + 128).astype(np.uint8), 1 / 128),
        "i16": ((signal * 32768).astype(np.int16), 1 / 32768),
        "i32": ((signal.astype(np.float64) * 2 ** 31).astype(np.int32), 1e-9),
        "f32": (signal, 0.0),
    }
    for name, (samples, tolerance) in cases.items():
        stereo = np.stack([samples, samples], axis=1)  # both channels equal: the mix is the signal
        scipy.io.wavfile.write(tmp_path / f"{name}.wav", 8000, stereo)
        audio, rate = speech.read_audio(tmp_path / f"{name}.wav")
        assert rate == 8000 and audio.dtype == np.float32 and audio.shape == (4,)
        np.testing.assert_allclose(audio, signal, atol=tolerance + 1e-7, err_msg=name)
    # 24-bit PCM, written with the standard library (little-endian 3-byte samples)
    ints = (signal.astype(np.float64) * 2 ** 23).astype(np.int32)
    with wave.open(str(tmp_path / "i24.wav"), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(3)
        file.setframerate(16000)
        file.writeframes(b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints))
    audio, rate = speech.read_audio(tmp_path / "i24.wav")
    np.testing.assert_allclose(audio, signal, atol=2 ** -23)


def test_bad_audio_files_raise_data_errors_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.wav: audio file not found"):
        speech.read_audio(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(DataError, match="junk.wav: not a readable WAV file"):
        speech.read_audio(tmp_path / "junk.wav")
    write_wav16(tmp_path / "full.wav", tone_utterance("AB"))
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[:30])
    with pytest.raises(DataError, match="cut.wav"):
        speech.read_audio(tmp_path / "cut.wav")
    scipy.io.wavfile.write(tmp_path / "empty.wav", 16000, np.zeros(0, dtype=np.int16))
    with pytest.raises(DataError, match="empty.wav: the audio is empty"):
        speech.read_audio(tmp_path / "empty.wav")


def test_resample_keeps_the_frequency_and_scales_the_length():
    rate, seconds = 8000, 0.5
    t = np.arange(int(rate * seconds)) / rate
    audio = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = speech.resample(audio, rate, 16000)
    assert len(out) == 2 * len(audio)
    spectrum = np.abs(np.fft.rfft(out))
    assert np.fft.rfftfreq(len(out), 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=2)
    assert speech.resample(audio, rate, rate) is audio


def test_mel_filterbank_and_feature_shapes():
    bank = speech.mel_filterbank(20, 320, 16000)
    assert bank.shape == (20, 161) and bank.min() >= 0 and bank.max() <= 1
    assert (bank.sum(dim=1) > 0).all()  # no empty filter
    peaks = bank.argmax(dim=1)
    assert (peaks[1:] > peaks[:-1]).all()  # centres increase
    audio = tone_utterance("ABC")  # 3 * 0.07 s = 3360 samples
    for kind, bins in (("logmel", 20), ("spectrogram", 161)):
        values = speech.features(audio, config("x", features=kind, n_mels=20))
        assert values.shape == (bins, 1 + (len(audio) - 320) // 160)
        torch.testing.assert_close(values.mean(dim=1), torch.zeros(bins), atol=1e-5, rtol=0)
        torch.testing.assert_close(values.std(dim=1), torch.ones(bins), atol=1e-3, rtol=0)
        assert speech.feature_size(config("x", features=kind, n_mels=20)) == bins
    assert speech.features(np.zeros(100, np.float32), config("x")).shape[1] == 1  # padded to a window


def test_spec_augment_masks_within_bounds_and_repeats_with_the_seed():
    cfg = config("x", freq_masks=2, freq_mask_width=3, time_masks=1, time_mask_width=5)
    values = torch.randn(16, 40) + 10  # no zeros of its own
    first = speech.spec_augment(values, cfg, torch.Generator().manual_seed(1))
    again = speech.spec_augment(values, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and not torch.equal(first, values)
    zero_rows = (first == 0).all(dim=1).sum().item()
    zero_columns = (first == 0).all(dim=0).sum().item()
    assert zero_rows <= 6 and zero_columns <= 5
    assert ((first == 0) | (first == values)).all()  # only zeroing


# ---------------------------------------------------------------- transcripts and listings


def test_text_encoding_and_ctc_minimum():
    assert speech.normalize_text("  it's  a\tTest ") == "IT'S A TEST"
    labels = speech.encode_text("IT'S A")
    assert labels.tolist() == [11, 22, 2, 21, 1, 3] and speech.decode_labels(labels) == "IT'S A"
    assert speech.ctc_min_frames(speech.encode_text("AB")) == 2
    assert speech.ctc_min_frames(speech.encode_text("AAB")) == 4  # a blank between the two As
    assert speech.ctc_min_frames(speech.encode_text("LOOK  ".strip())) == 5
    assert len(speech.ALPHABET) == 29 and speech.ALPHABET[0] == speech.BLANK


def test_list_an4_reads_both_transcript_styles(an4_dir):
    train = speech.list_an4(an4_dir, "train")
    test = speech.list_an4(an4_dir, "test")
    assert len(train) == 16 and len(test) == 8
    first_line = (an4_dir / "etc/an4_train.transcription").read_text().splitlines()[0]
    assert first_line.startswith("<s> ") and train[0].text == first_line[4:first_line.index(" </s>")]
    assert "(" not in test[0].text and test[0].text.isupper()
    assert train[0].speaker == "tr00" and train[0].audio.exists()
    assert train[0].source.endswith("an4_train.transcription:1")


def test_list_an4_rejects_a_missing_root_and_mismatched_listings(tmp_path, an4_dir):
    with pytest.raises(DataError, match="AN4 listing not found"):
        speech.list_an4(tmp_path, "train")
    broken = tmp_path / "an4"
    (broken / "etc").mkdir(parents=True)
    (broken / "etc/an4_train.fileids").write_text("a\nb\n")
    (broken / "etc/an4_train.transcription").write_text("<s> A </s> (a)\n")
    with pytest.raises(DataError, match="1 transcripts for 2 file ids"):
        speech.list_an4(broken, "train")


def test_manifests_csv_and_jsonl_with_relative_paths(tmp_path):
    write_wav16(tmp_path / "audio/a.wav", tone_utterance("AB"))
    (tmp_path / "m.csv").write_text("audio,text,speaker\naudio/a.wav,hello there,ann\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "audio/a.wav", "text": "Hi"}) + "\n\n")
    csv_entries = speech.list_manifest(tmp_path / "m.csv")
    assert csv_entries[0].audio == tmp_path / "audio/a.wav" and csv_entries[0].text == "HELLO THERE"
    assert csv_entries[0].speaker == "ann" and csv_entries[0].source == f"{tmp_path / 'm.csv'}:2"
    assert speech.list_manifest(tmp_path / "m.jsonl")[0].text == "HI"
    (tmp_path / "bad.csv").write_text("path,text\na.wav,x\n")
    with pytest.raises(DataError, match=r"bad.csv:2: unknown manifest layout, fields \['path', 'text'\]; "
                                        r"expected audio \+ text .*audio_filepath \+ text \(NeMo\)"):
        speech.list_manifest(tmp_path / "bad.csv")
    (tmp_path / "gap.csv").write_text("audio,text\na.wav,x\nb.wav\n")
    with pytest.raises(DataError, match=r"gap.csv:3: needs string fields 'audio' and 'text' \(csv"):
        speech.list_manifest(tmp_path / "gap.csv")
    (tmp_path / "bad.jsonl").write_text('{"audio": "a.wav", "text": "x"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        speech.list_manifest(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=r"must be .csv, .jsonl or .json \(NeMo\)"):
        speech.list_manifest(tmp_path / "audio/a.wav")
    with pytest.raises(DataError, match="nope.csv: file not found"):
        speech.list_manifest(tmp_path / "nope.csv")


def test_bad_utterances_stop_loading_or_are_skipped_and_counted(tmp_path):
    write_wav16(tmp_path / "good.wav", tone_utterance("AB"))
    (tmp_path / "corrupt.wav").write_bytes(b"not a wav at all")
    rows = ["audio,text", "good.wav,ab", "missing.wav,ab", "corrupt.wav,ab", "good.wav,a-b", "good.wav,  "]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    entries = speech.list_manifest(tmp_path / "m.csv")
    with pytest.raises(DataError, match=r"m.csv:3: .*missing.wav: audio file not found.*on_bad_audio"):
        speech.load_entries(entries, config(tmp_path / "m.csv"))
    data = speech.load_entries(entries, config(tmp_path / "m.csv", on_bad_audio="skip"))
    assert len(data) == 1 and data.texts == ["AB"]
    assert [reason.split(": ", 1)[0].rsplit(":", 1)[1] for reason in data.skipped] == ["3", "4", "5", "6"]
    assert "outside the alphabet: '-'" in data.skipped[2] and "empty transcript" in data.skipped[3]


def test_too_short_audio_is_refused_or_dropped(tmp_path):
    data = speech.SpeechSet(["short", "fine"], [torch.zeros(4, 3), torch.zeros(4, 10)],
                            [speech.encode_text("AAB"), speech.encode_text("AB")], ["AAB", "AB"],
                            ["list.csv:2", "list.csv:3"])
    with pytest.raises(DataError, match=r"list.csv:2: short: audio too short .*\(3 output frames, CTC"):
        speech.drop_too_short(data, lambda frames: frames, "error")
    kept = speech.drop_too_short(data, lambda frames: frames, "skip")
    assert kept.ids == ["fine"] and len(kept.skipped) == 1


def test_validation_holds_out_whole_speakers(an4_dir):
    entries = speech.list_an4(an4_dir, "train")  # 4 speakers
    train, valid = speech.hold_out_speakers(entries, 0.3, seed=0)
    assert len({e.speaker for e in valid}) == math.ceil(0.3 * 4)
    assert not {e.speaker for e in train} & {e.speaker for e in valid}
    assert len(train) + len(valid) == len(entries)
    assert speech.hold_out_speakers(entries, 0.3, seed=0) == (train, valid)
    with pytest.raises(DataError, match="at least two speakers"):
        speech.hold_out_speakers(entries[:1], 0.3, seed=0)


def test_load_speech_an4_and_manifest_splits(an4_dir, tmp_path):
    sets = speech.load_speech(config(an4_dir, kind="an4", n_mels=16, valid_fraction=0.25))
    assert (len(sets["train"]), len(sets["valid"]), len(sets["test"])) == (12, 4, 8)
    (tmp_path / "train.csv").write_text(
        "audio,text\n" + "".join(f"{e.audio},{e.text}\n" for e in speech.list_an4(an4_dir, "train")))
    sets = speech.load_speech(config(tmp_path / "train.csv", valid=tmp_path / "train.csv", n_mels=16),
                              splits=("train", "valid", "test"))
    assert len(sets["train"]) == len(sets["valid"]) == 16 and len(sets["test"]) == 0
    with pytest.raises(DataError, match="AN4 directory not found"):
        speech.load_speech(config(tmp_path / "nothing", kind="an4"))


# ---------------------------------------------------------------- batches


def test_length_sorted_batches_cover_every_utterance_once():
    lengths = [7, 3, 9, 1, 5, 8, 2]
    data = speech.SpeechSet([str(i) for i in range(7)], [torch.zeros(2, n) for n in lengths],
                            [speech.encode_text("A")] * 7, ["A"] * 7, ["x"] * 7)
    first = speech.length_sorted_batches(data, 3, epoch=0, seed=0)
    assert first == [[3, 6, 1], [4, 0, 5], [2]]  # shortest first (SortaGrad)
    later = speech.length_sorted_batches(data, 3, epoch=1, seed=0)
    assert sorted(map(tuple, later)) == sorted(map(tuple, first))
    assert later == speech.length_sorted_batches(data, 3, epoch=1, seed=0)
    batch = speech.collate(data, [3, 2])
    assert batch.features.shape == (2, 2, 9) and batch.lengths.tolist() == [1, 9]
    assert batch.label_lengths.tolist() == [1, 1] and batch.labels.tolist() == [3, 3]
