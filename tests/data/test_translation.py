"""Parallel text: reading, alignment and encoding checks, the subword vocabulary, bucketed batches."""

import gzip

import pytest
import torch

from sparsernn.config import TranslationDataConfig
from sparsernn.data import translation
from sparsernn.data.translation import BOS, EOS, PAD, DataError
from tests.conftest import write_parallel


def config(path, **fields):
    return TranslationDataConfig(kind="translation", path=path, vocab_size=60, **fields)


def test_reads_gzip_and_plain_files_and_names_bad_bytes(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"eins\nzwei drei\r\n")
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"eins\nzwei drei\n"))
    assert translation.read_lines(tmp_path / "a.txt") == translation.read_lines(tmp_path / "a.txt.gz") == [
        "eins", "zwei drei"]
    (tmp_path / "bad.txt").write_bytes(b"gut\nschl\xe4ft\n")  # Latin-1, not UTF-8
    with pytest.raises(DataError, match=r"bad.txt:2: not UTF-8 text \(invalid continuation byte at byte 4\)"):
        translation.read_lines(tmp_path / "bad.txt")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(b"x" * 100)[:20])
    with pytest.raises(DataError, match="cut.gz: not a readable gzip file"):
        translation.read_lines(tmp_path / "cut.gz")
    with pytest.raises(DataError, match="nope.de: file not found"):
        translation.read_lines(tmp_path / "nope.de")


def test_misaligned_and_empty_splits_are_refused(tmp_path):
    write_parallel(tmp_path, gzip_files=False)
    lines = (tmp_path / "val.en").read_text().splitlines()
    (tmp_path / "val.en").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"val.en: 39 lines, but .*val.de has 40; the files must be "
                                        r"line-aligned"):
        translation.read_pairs(config(tmp_path), "valid")
    (tmp_path / "empty.de").write_text("")
    (tmp_path / "empty.en").write_text("")
    with pytest.raises(DataError, match=r"empty.de: the test split is empty"):
        translation.read_pairs(config(tmp_path, test="empty"), "test")


def test_empty_and_too_long_pairs_are_counted_and_skipped_in_training_only(tmp_path):
    write_parallel(tmp_path)
    tokenizer = translation.load_translation(config(tmp_path), splits=("train",))[1]
    pairs = [("der hund", "the dog"), ("", "the dog"), ("der hund", "  "), ("der " * 30, "the " * 30)]
    train = translation.encode_pairs(pairs, tokenizer, max_length=20)
    assert len(train) == 1 and train.skipped == {"empty": 2, "too long": 1}
    assert train.references == ["the dog"]
    assert len(translation.encode_pairs(pairs, tokenizer, max_length=20, keep_all=True)) == 2


def test_tokenizer_is_deterministic_and_round_trips(tmp_path):
    write_parallel(tmp_path)
    first = translation.load_translation(config(tmp_path), splits=("valid",))[1]
    second = translation.load_translation(config(tmp_path), splits=("valid",))[1]
    assert first.model == second.model and len(first) == 60
    assert first.pieces[:4] == ["<pad>", "<unk>", "<s>", "</s>"]
    ids = first.encode("Der rote Hund läuft.")
    assert first.decode(ids) == "Der rote Hund läuft."
    assert first.decode([BOS, *ids, EOS, *ids]) == "Der rote Hund läuft."  # stops at the end of sentence
    again = translation.Tokenizer(first.model)
    assert again.encode("ein mann") == first.encode("ein mann")
    with pytest.raises(DataError, match="lower data.vocab_size"):
        translation.Tokenizer.train(["ab ab"], "unigram", 500)


def test_bucketed_batches_cover_every_pair_once_in_a_new_order_each_epoch(tmp_path):
    write_parallel(tmp_path)
    data = translation.load_translation(config(tmp_path), splits=("train",))[0]["train"]
    epoch0 = translation.bucketed_batches(data, 16, epoch=0, seed=0)
    assert sorted(i for batch in epoch0 for i in batch) == list(range(len(data)))
    assert epoch0 == translation.bucketed_batches(data, 16, epoch=0, seed=0)
    assert epoch0 != translation.bucketed_batches(data, 16, epoch=1, seed=0)
    spread = [max(len(data.sources[i]) for i in b) - min(len(data.sources[i]) for i in b) for b in epoch0]
    assert sum(spread) / len(spread) <= 2  # sorted within pools: similar lengths, little padding
    batch = translation.collate(data, epoch0[0])
    row = batch.target_out[0][batch.target_out[0] != PAD]
    assert batch.target_in[0, 0] == BOS and row[-1] == EOS
    assert torch.equal(batch.target_in[0, 1:len(row)], row[:-1])
    assert batch.source.shape == (len(epoch0[0]), int(batch.source_lengths.max()))
