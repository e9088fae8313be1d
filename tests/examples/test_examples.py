"""Each example script, run end to end on a tiny generated slice: it trains, prunes to the target,
sparsifies, saves, loads into a fresh instance and times, and all three copies agree."""

import importlib.util
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sparsernn.engine import ProgramEngine
from tests.conftest import WORDS, write_corpus

EXAMPLES = Path(__file__).parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lstm_language_model(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", lines=(400, 40, 150))
    result = load("lstm_language_model").main(["--data", str(corpus), "--hidden", "16", "--steps", "40",
                                                "--seconds", "0.05", "--out", str(tmp_path / "out")])
    assert result["sparsity"] == pytest.approx(0.9, abs=0.01)
    values = list(result["perplexity"].values())
    assert values[0] < 18 and values == pytest.approx([values[0]] * 4, rel=1e-4)
    assert (tmp_path / "out/lm.safetensors").stat().st_size == result["file"]["bytes"]
    assert (tmp_path / "out/vocabulary.txt").read_text().split("\n")[0] == "<unk>"
    assert set(result["streaming"]) == set(result["sequences"]) == {"pytorch", "sparsified", "program"}


def test_gru_tagger(tmp_path):
    rng = random.Random(0)
    text = tmp_path / "text.txt"
    lines = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) for _ in range(600))
    text.write_text("\n".join(lines))
    result = load("gru_tagger").main(["--data", str(text), "--hidden", "32", "--steps", "200",
                                      "--seconds", "0.05", "--out", str(tmp_path / "out")])
    assert result["sparsity"] == pytest.approx(0.9, abs=0.01)
    scores = list(result["f1"].values())
    assert len(scores) == 4 and scores[0] > 0.5 and scores == pytest.approx([scores[0]] * 4, abs=1e-6)
    assert set(result["us"]) == {"pytorch", "sparsified", "program"}
    # the saved program (packed sequences) in the C runtime, a line at a time, as the Python engine
    if shutil.which("cc") is None or shutil.which("make") is None:
        return
    subprocess.run(["make", "--no-print-directory", "-s", "runtime"], cwd=EXAMPLES.parent, check=True)
    line = np.array([rng.randint(1, 16) for _ in range(23)], np.int64)  # the alphabet has 17
    np.save(tmp_path / "line.npy", line)
    model = tmp_path / "out/tagger.safetensors"
    subprocess.run([str(EXAMPLES.parent / "build/runtime/sparsernn-run"), str(model), "--input",
                    str(tmp_path / "line.npy"), "--output", str(tmp_path / "tags.npy"), "--whole"],
                   check=True)
    engine = ProgramEngine.from_file(model).run([line[:, None, None], np.array([[len(line)]])])[0]
    np.testing.assert_allclose(np.load(tmp_path / "tags.npy"), engine[:, :, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                    reason="no C compiler or make")
def test_c_example_generates_the_words_python_does(tmp_path):
    """examples/c/generate on the file lstm_language_model.py writes: with temperature 0 each next word is
    the most likely one, as the Python program engine computes it."""
    corpus = write_corpus(tmp_path / "corpus", lines=(400, 40, 150))
    load("lstm_language_model").main(["--data", str(corpus), "--hidden", "16", "--steps", "40",
                                      "--seconds", "0.01", "--out", str(tmp_path / "out")])
    subprocess.run(["make", "-s", "-C", str(EXAMPLES / "c")], check=True, capture_output=True)
    words = subprocess.run([str(EXAMPLES / "c" / "generate"), str(tmp_path / "out/lm.safetensors"),
                            str(tmp_path / "out/vocabulary.txt"), "12", "the", "0"],
                           capture_output=True, text=True, check=True).stdout.split()
    vocabulary = (tmp_path / "out/vocabulary.txt").read_text().split("\n")[:-1]
    engine = ProgramEngine.from_file(tmp_path / "out/lm.safetensors")
    expected, word = ["the"], vocabulary.index("the")
    for _ in range(12):
        logits = engine.run([np.array([[[word]]])])[0]
        word = int(logits[0, :, 0].argmax())
        expected.append(vocabulary[word])
    assert words == [w for w in expected if w != "<eos>"]  # <eos> prints as a line break
