"""Parallel text for translation: line-aligned files, a sentencepiece subword vocabulary trained on the
training split, and length-bucketed batches.

A split is ``{path}/{name}.{language}`` (or ``.gz``) for the source and target language, one sentence per
line, line ``i`` of one the translation of line ``i`` of the other. Files whose line counts differ, bytes
that are not UTF-8 and empty splits stop loading with one message naming the file (and line); pairs that
are empty or longer than ``max_length`` subwords are counted and skipped, never silently truncated.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sparsernn.config import TranslationDataConfig
from sparsernn.data.text import DataError

#: Special ids of every vocabulary: padding, unknown, begin and end of sentence.
PAD, UNK, BOS, EOS = 0, 1, 2, 3


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, gzip'd or plain; undecodable bytes name the file and line."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable gzip file ({error})") from None
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    decoded = []
    for number, line in enumerate(lines, start=1):
        try:
            decoded.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as error:
            raise DataError(f"{path}:{number}: not UTF-8 text ({error.reason} at byte {error.start})"
                            ) from None
    return decoded


def split_file(config: TranslationDataConfig, split: str, language: str) -> Path:
    """``{path}/{name}.{language}.gz`` if present, else the plain file."""
    name = getattr(config, split)
    plain = Path(config.path) / f"{name}.{language}"
    packed = plain.with_name(plain.name + ".gz")
    return packed if packed.exists() or not plain.exists() else plain


def read_pairs(config: TranslationDataConfig, split: str) -> list[tuple[str, str]]:
    """(source, target) sentences of a split, checked to be line-aligned and not empty."""
    source_path, target_path = (split_file(config, split, lang) for lang in (config.source, config.target))
    sources, targets = read_lines(source_path), read_lines(target_path)
    if len(sources) != len(targets):
        raise DataError(f"{target_path}: {len(targets)} lines, but {source_path} has {len(sources)}; "
                        "the files must be line-aligned")
    if not sources:
        raise DataError(f"{source_path}: the {split} split is empty")
    return list(zip(sources, targets, strict=True))


class Tokenizer:
    """A sentencepiece model: text <-> subword ids (0 pad, 1 unknown, 2 begin, 3 end of sentence)."""

    def __init__(self, model: bytes):
        import sentencepiece

        self.model = model
        self.processor = sentencepiece.SentencePieceProcessor(model_proto=model)

    @classmethod
    def train(cls, sentences: list[str], kind: str, vocab_size: int) -> Tokenizer:
        """Train on ``sentences`` (the training split, both languages); deterministic (one thread)."""
        import io

        import sentencepiece

        proto = io.BytesIO()
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences), model_writer=proto, model_type=kind,
                vocab_size=vocab_size, character_coverage=1.0, pad_id=PAD, unk_id=UNK, bos_id=BOS,
                eos_id=EOS, num_threads=1, minloglevel=2)
        except RuntimeError as error:  # e.g. a vocabulary larger than the text allows
            raise DataError(f"sentencepiece could not train a {kind} vocabulary of {vocab_size} "
                            f"({error}); lower data.vocab_size") from None
        return cls(proto.getvalue())

    def __len__(self) -> int:
        return self.processor.get_piece_size()

    @property
    def pieces(self) -> list[str]:
        return [self.processor.id_to_piece(i) for i in range(len(self))]

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def decode(self, ids: list[int]) -> str:
        """Detokenized text of ids, stopping at the first end of sentence."""
        ids = list(ids)
        if EOS in ids:
            ids = ids[:ids.index(EOS)]
        return self.processor.decode([i for i in ids if i not in (PAD, BOS)])


@dataclass
class ParallelSet:
    """One split as subword ids, and what was skipped while loading it."""

    sources: list[torch.Tensor]
    targets: list[torch.Tensor]  # without begin / end of sentence
    references: list[str]  # the target sentences as written, for BLEU
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def __len__(self) -> int:
        return len(self.sources)


def encode_pairs(pairs: list[tuple[str, str]], tokenizer: Tokenizer, max_length: int,
                 keep_all: bool = False) -> ParallelSet:
    """Subword ids of each pair; empty and too-long pairs are counted and skipped (``keep_all``: too-long
    pairs are kept, as an evaluation split must be scored whole)."""
    data = ParallelSet([], [], [], {"empty": 0, "too long": 0})
    for source, target in pairs:
        if not source.strip() or not target.strip():
            data.skipped["empty"] += 1
            continue
        source_ids, target_ids = tokenizer.encode(source), tokenizer.encode(target)
        if not keep_all and max(len(source_ids), len(target_ids) + 1) > max_length:
            data.skipped["too long"] += 1
            continue
        data.sources.append(torch.tensor(source_ids))
        data.targets.append(torch.tensor(target_ids))
        data.references.append(target)
    return data


def load_translation(config: TranslationDataConfig, tokenizer: Tokenizer | None = None,
                     splits=("train", "valid", "test")) -> tuple[dict[str, ParallelSet], Tokenizer]:
    """The splits a config names, and the tokenizer (trained on the training split unless given)."""
    raw = {split: read_pairs(config, split) for split in splits}
    if tokenizer is None:
        train = raw["train"] if "train" in raw else read_pairs(config, "train")
        tokenizer = Tokenizer.train([s for pair in train for s in pair if s.strip()], config.vocabulary,
                                    config.vocab_size)
    return ({split: encode_pairs(pairs, tokenizer, config.max_length, keep_all=split != "train")
             for split, pairs in raw.items()}, tokenizer)


@dataclass
class TranslationBatch:
    source: torch.Tensor  # (B, S) padded with PAD
    source_lengths: torch.Tensor  # (B,)
    target_in: torch.Tensor  # (B, T): BOS, y_1 ... y_n, padded
    target_out: torch.Tensor  # (B, T): y_1 ... y_n, EOS, padded
    indices: list[int]

    def to(self, device) -> TranslationBatch:
        return TranslationBatch(self.source.to(device), self.source_lengths.to(device),
                                self.target_in.to(device), self.target_out.to(device), self.indices)


def collate(data: ParallelSet, indices: list[int]) -> TranslationBatch:
    from torch.nn.utils.rnn import pad_sequence

    sources = [data.sources[i] for i in indices]
    targets = [data.targets[i] for i in indices]
    bos, eos = torch.tensor([BOS]), torch.tensor([EOS])
    return TranslationBatch(
        pad_sequence(sources, batch_first=True, padding_value=PAD), torch.tensor([len(s) for s in sources]),
        pad_sequence([torch.cat([bos, t]) for t in targets], batch_first=True, padding_value=PAD),
        pad_sequence([torch.cat([t, eos]) for t in targets], batch_first=True, padding_value=PAD), indices)


def bucketed_batches(data: ParallelSet, batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    """Batches of pairs of similar length (little padding) in a new random order each epoch: pairs are
    shuffled, sorted by length within pools of 50 batches, cut into batches, and the batches shuffled."""
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(data)))
    rng.shuffle(order)
    pool = 50 * batch_size
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: (len(data.sources[i]), len(data.targets[i])))
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def in_order(data: ParallelSet, batch_size: int) -> list[list[int]]:
    """Evaluation batches: sorted by source length (fast), every pair once."""
    order = sorted(range(len(data)), key=lambda i: len(data.sources[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
