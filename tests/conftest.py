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
