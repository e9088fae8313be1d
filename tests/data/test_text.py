import pytest
import torch

from sparsernn.config import DataConfig
from sparsernn.data.text import (
    EOS,
    UNK,
    DataError,
    batchify,
    bptt_windows,
    load_corpus,
    num_windows,
    word_tokens,
)


def test_word_corpus(tmp_path):
    for split, text in {"train": "a b\nb c\n", "valid": "c a\n", "test": "a d\n"}.items():
        (tmp_path / f"{split}.txt").write_text(text)
    corpus = load_corpus(DataConfig(path=tmp_path))
    assert corpus.vocabulary == ("a", "b", EOS, "c", UNK)
    assert corpus.train.tolist() == [0, 1, 2, 1, 3, 2]
    assert corpus.test.tolist() == [0, 4, 2]  # unseen "d" -> <unk>
    assert word_tokens("x y\n\nz") == ["x", "y", EOS, EOS, "z", EOS]


def test_char_corpus_split(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text("abcdefghij" * 10)
    corpus = load_corpus(DataConfig(path=path, level="char", split=(0.8, 0.1)))
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (80, 10, 10)
    assert corpus.vocabulary[:3] == ("a", "b", "c")


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "data directory not found"),
    (lambda d: d.mkdir(), "no ptb.train.txt or train.txt"),
    (lambda d: (d.mkdir(), (d / "ptb.train.txt").write_text("a\n")), "ptb.valid.txt: split file not found"),
    (lambda d: (d.mkdir(), *[(d / f"ptb.{s}.txt").write_text("" if s == "valid" else "a\n")
                             for s in ("train", "valid", "test")]), "ptb.valid.txt: the file is empty"),
])
def test_bad_data_named(tmp_path, setup, message):
    directory = tmp_path / "data"
    setup(directory)
    with pytest.raises(DataError, match=message):
        load_corpus(DataConfig(path=directory))


def test_batchify_and_windows():
    columns = batchify(torch.arange(23), 4)  # 5 steps x 4 columns, 3 tokens dropped
    assert columns.shape == (5, 4) and columns[:, 1].tolist() == [5, 6, 7, 8, 9]
    windows = list(bptt_windows(columns, 3))
    assert num_windows(columns, 3) == len(windows) == 2
    assert windows[1][1][:, 0].tolist() == [3] and windows[1][2][:, 0].tolist() == [4]
    assert torch.equal(windows[0][2], columns[1:4])
    assert [w[0] for w in bptt_windows(columns, 3, first=1)] == [1]
    with pytest.raises(DataError, match="too few"):
        batchify(torch.arange(5), 4)


def test_stdlib_text_is_real_english():
    from sparsernn.data.text import stdlib_text

    text = stdlib_text()
    assert len(text) > 100_000 and " the " in text
