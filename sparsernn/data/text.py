"""Word- and character-level text corpora and truncated-BPTT batches.

Word level reads the PTB / WikiText layout (``ptb.{train,valid,test}.txt`` or ``{train,valid,test}.txt``
in a directory): whitespace tokens, ``<eos>`` at each line end, the vocabulary from the training split,
unseen words mapped to ``<unk>``. Character level reads one plain text file (Tiny Shakespeare), or
``stdlib:pydoc`` (Python's bundled reference docs, offline everywhere), and splits it into
train/valid/test by fractions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from sparsernn.config import DataConfig
from sparsernn.errors import UserError

UNK, EOS = "<unk>", "<eos>"
#: ``data.path`` of a built-in character corpus: the Python reference docs bundled with CPython.
STDLIB_CORPUS = "stdlib:pydoc"
SPLITS = ("train", "valid", "test")


class DataError(UserError):
    """A problem with the user's data: the message names the file."""


@dataclass(frozen=True)
class Corpus:
    vocabulary: tuple[str, ...]
    train: torch.Tensor  # (tokens,) int64
    valid: torch.Tensor
    test: torch.Tensor

    def split(self, name: str) -> torch.Tensor:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


def read_text(path: Path) -> str:
    """A UTF-8 text file's contents; a missing, unreadable or empty file is a DataError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read as UTF-8 text ({error})") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    return text


def split_files(directory: Path) -> dict[str, Path]:
    """The split files of a PTB- or WikiText-style directory."""
    if not directory.is_dir():
        raise DataError(f"{directory}: data directory not found")
    for pattern in ("ptb.{}.txt", "{}.txt", "wiki.{}.tokens"):
        files = {split: directory / pattern.format(split) for split in SPLITS}
        if files["train"].exists():
            missing = [str(path) for path in files.values() if not path.exists()]
            if missing:
                raise DataError(f"{missing[0]}: split file not found")
            return files
    raise DataError(f"{directory}: no ptb.train.txt or train.txt in the data directory")


def word_tokens(text: str) -> list[str]:
    return [token for line in text.splitlines() for token in (*line.split(), EOS)]


def encode(tokens, vocabulary) -> torch.Tensor:
    """Token ids by position in ``vocabulary``; tokens outside it become ``<unk>``."""
    index = {token: i for i, token in enumerate(vocabulary)}
    unknown = index[UNK]
    return torch.tensor([index.get(token, unknown) for token in tokens], dtype=torch.long)


def _build(train_tokens, valid_tokens, test_tokens) -> Corpus:
    vocabulary = list(dict.fromkeys(train_tokens))  # order of first appearance: deterministic
    if UNK not in vocabulary:
        vocabulary.append(UNK)
    return Corpus(tuple(vocabulary), encode(train_tokens, vocabulary), encode(valid_tokens, vocabulary),
                  encode(test_tokens, vocabulary))


def stdlib_text() -> str:
    """English text present wherever Python is installed (``data.path: stdlib:pydoc``): pydoc's topic
    help, about 465,000 characters."""
    try:
        from pydoc_data.topics import topics
    except ImportError as error:  # some distributions strip it from minimal installs
        raise DataError(f"{STDLIB_CORPUS}: this Python has no pydoc_data module") from error
    return "\n".join(topics[key] for key in sorted(topics))


def load_corpus(config: DataConfig) -> Corpus:
    """Read the corpus a data config names."""
    path = Path(config.path)
    if config.level == "word":
        files = split_files(path)
        return _build(*(word_tokens(read_text(files[split])) for split in SPLITS))
    if str(path) == STDLIB_CORPUS:
        text = stdlib_text()
    elif path.is_dir():
        raise DataError(f"{path}: character level reads one text file, not a directory")
    else:
        text = read_text(path)
    train_fraction, valid_fraction = config.split
    if train_fraction + valid_fraction >= 1.0 or min(config.split) <= 0:
        raise DataError(f"data.split {list(config.split)}: need positive fractions summing below 1")
    first, second = int(train_fraction * len(text)), int((train_fraction + valid_fraction) * len(text))
    return _build(list(text[:first]), list(text[first:second]), list(text[second:]))


def batchify(tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Lay a token stream into ``batch_size`` parallel columns: (steps, batch_size)."""
    steps = len(tokens) // batch_size
    if steps < 2:
        raise DataError(f"{len(tokens)} tokens are too few for batch size {batch_size}")
    return tokens[:steps * batch_size].view(batch_size, steps).t().contiguous()


def bptt_windows(columns: torch.Tensor, bptt: int,
                 first: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(index, inputs, targets) windows of at most ``bptt`` steps, from window ``first`` on."""
    count = num_windows(columns, bptt)
    for index in range(first, count):
        start = index * bptt
        length = min(bptt, len(columns) - 1 - start)
        yield index, columns[start:start + length], columns[start + 1:start + 1 + length]


def num_windows(columns: torch.Tensor, bptt: int) -> int:
    return -(-(len(columns) - 1) // bptt)
