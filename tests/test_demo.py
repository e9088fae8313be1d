import subprocess
import sys

import pytest

from sparsernn.cli import main
from sparsernn.demo import DemoConfig, encode, run_demo, stdlib_text


def test_stdlib_text_is_real_english():
    text = stdlib_text()
    assert len(text) > 100_000 and " the " in text
    data, alphabet = encode("abca")
    assert data.tolist() == [0, 1, 2, 0] and alphabet == ["a", "b", "c"]


def test_tiny_demo_prunes_to_target_and_reports(capsys):
    results = run_demo(DemoConfig(steps=60, hidden_size=32, embedding_size=16, batch_size=8,
                                  seq_len=16))
    out = capsys.readouterr().out
    assert "rnn.weight_hh_l0" in out and "validation perplexity per character" in out
    assert results["narang 90% sparsity"] == pytest.approx(0.9, abs=0.005)
    assert results["dense sparsity"] == 0.0
    assert 1.0 < results["dense"] < 103  # better than uniform over the alphabet


def test_cli_rejects_bad_arguments(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "sparsernn", "--help"], capture_output=True,
                            text=True, check=True)
    assert "demo" in result.stdout
    result = subprocess.run([sys.executable, "-c", "import sparsernn, sys; "
                             "print(sorted(m for m in sys.modules if m.startswith('sparsernn')))"],
                            capture_output=True, text=True, check=True)
    assert "sparsernn.demo" not in result.stdout  # importing does no work
