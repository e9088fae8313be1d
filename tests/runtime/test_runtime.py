"""The C runtime (runtime/, built by `make runtime`) against the Python engine and PyTorch: the same file
gives the same outputs in C on x86, in C on aarch64 under qemu, in the Python engine and in the masked
PyTorch model; the CLI's errors are one line; the committed fixtures are what make_fixtures.py writes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sparsernn import save_sparse
from sparsernn.engine import ProgramEngine
from tests.engine.test_program import Tagger, WordLM, pruned

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "build" / "runtime" / "sparsernn-run"
AARCH64 = ROOT / "build" / "aarch64" / "sparsernn-run"
FIXTURES = ROOT / "runtime" / "tests" / "fixtures"

pytestmark = pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None,
                                reason="no C compiler or make")


@pytest.fixture(scope="module")
def cli():
    subprocess.run(["make", "--no-print-directory", "-s", "runtime"], cwd=ROOT, check=True)
    return CLI


def run(binary, model, inputs, tmp_path, *extra, prefix=()):
    np.save(tmp_path / "in.npy", inputs)
    command = [*prefix, str(binary), str(model), "--input", str(tmp_path / "in.npy"), "--output",
               str(tmp_path / "out.npy"), *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return np.load(tmp_path / "out.npy")


def relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize(("cell", "block", "values"), [(nn.LSTM, None, "fp32"), (nn.GRU, None, "fp32"),
                                                       (nn.RNN, None, "fp32"), (nn.GRU, (8, 1), "fp32"),
                                                       (nn.LSTM, None, "bf16"), (nn.GRU, (8, 1), "bf16"),
                                                       (nn.LSTM, None, "int8"), (nn.GRU, None, "int8"),
                                                       (nn.GRU, (8, 1), "int8")])
def test_c_equals_the_python_engine_and_pytorch(cli, tmp_path, cell, block, values):
    torch.manual_seed(0)
    model = WordLM(cell, vocab=304, layers=2).eval()
    if block:
        from sparsernn import Pruner
        from sparsernn.prune import OneShotSchedule

        schedules = dict.fromkeys(("recurrent", "linear", "embedding"), OneShotSchedule(at=1, sparsity=0.9))
        Pruner(model, schedules, block=block).step()
    else:
        pruned(model)
    tokens = torch.randint(0, 304, (200, 1))
    path = tmp_path / "lm.safetensors"
    save_sparse(model, path, values=values, example_inputs=(tokens[:5],))
    got = run(cli, path, tokens.numpy().reshape(-1).astype(np.int64), tmp_path)
    engine = ProgramEngine.from_file(path).stream([tokens.numpy()[:, None, :]])[0][:, :, 0]
    with torch.no_grad():
        expected = model(tokens)[:, 0].numpy()
    tolerance = {"fp32": 1e-5, "bf16": 1e-2, "int8": 1e-2}[values]
    assert relative(got, engine) <= 1e-5, "C and the Python engine differ (both read the same values)"
    assert relative(got, expected) <= tolerance, relative(got, expected)


def test_whole_sequences_of_a_bidirectional_tagger(cli, tmp_path):
    torch.manual_seed(1)
    model = pruned(Tagger()).eval()
    tokens = torch.randint(0, 40, (1, 30))
    path = tmp_path / "tagger.safetensors"
    save_sparse(model, path, example_inputs=(tokens[:, :7],))
    got = run(cli, path, tokens.numpy()[0].astype(np.int32), tmp_path, "--whole")
    with torch.no_grad():
        assert relative(got, model(tokens)[0].numpy()) <= 1e-5
    np.save(tmp_path / "in.npy", tokens.numpy()[0])
    result = subprocess.run([str(cli), str(path), "--input", str(tmp_path / "in.npy"), "--output",
                             str(tmp_path / "out.npy")], capture_output=True, text=True)
    assert result.returncode == 2 and "bidirectional layer: run it with --whole" in result.stderr


def test_errors_are_one_line_naming_the_file(cli, tmp_path):
    def error(*args):
        result = subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        return result.stderr

    assert "missing.safetensors: cannot open the file" in error(tmp_path / "missing.safetensors", "--info")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((FIXTURES / "gru.safetensors").read_bytes()[:-10])
    assert "broken.safetensors: tensor" in error(broken, "--info")
    np.save(tmp_path / "features.npy", np.zeros((3, 4), np.float32))
    gru, out = FIXTURES / "gru.safetensors", tmp_path / "out.npy"
    assert "the model takes token ids" in error(gru, "--input", tmp_path / "features.npy", "--output", out)
    np.save(tmp_path / "ids.npy", np.array([1, 2, 99], np.int64))
    assert "token id 99 outside [0, 40)" in error(gru, "--input", tmp_path / "ids.npy", "--output", out)
    plain = tmp_path / "plain.safetensors"
    save_sparse(pruned(WordLM()).eval(), plain)  # no program
    assert "no program in this file" in error(plain, "--info")
    # many names for one tensor's bytes: refused before the reader copies each one
    data = (FIXTURES / "gru.safetensors").read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    largest = max((entry for name, entry in header.items() if name != "__metadata__"),
                  key=lambda entry: entry["data_offsets"][1] - entry["data_offsets"][0])
    header |= {f"copy{k}": largest for k in range(100)}
    text = json.dumps(header).encode()
    repeated = tmp_path / "repeated.safetensors"
    repeated.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length:])
    assert "overlapping data_offsets" in error(repeated, "--info")


def test_info_describes_the_program_and_the_matrices(cli):
    text = subprocess.run([str(cli), str(FIXTURES / "lstm_proj.safetensors"), "--info"], capture_output=True,
                          text=True, check=True).stdout
    assert "program: mode stream" in text
    assert "lstm, 2 layer(s), one direction, hidden 16, projected" in text
    assert "rnn.weight_hh_l0" in text and "csr" in text and "sparsity" in text and "bytes" in text


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None,
                    reason="no aarch64 cross compiler or qemu-aarch64")
@pytest.mark.parametrize("cpu", ["cortex-a53", "max"])
@pytest.mark.parametrize(("name", "tolerance"), [("lstm", 1e-5), ("lstm_int8", 1e-2)])
def test_aarch64_under_qemu_equals_x86_over_1000_streamed_steps(cli, tmp_path, cpu, name, tolerance):
    """int8: the integer sums are exact everywhere, but a last-bit difference in libm's tanh or exp can
    round a quantized input the other way, now and then."""
    subprocess.run(["make", "--no-print-directory", "-s", "runtime-aarch64"], cwd=ROOT, check=True)
    ids = np.load(FIXTURES / f"{name}.in.npy")
    assert ids.shape == (1000,)
    x86 = run(cli, FIXTURES / f"{name}.safetensors", ids, tmp_path)
    arm = run(AARCH64, FIXTURES / f"{name}.safetensors", ids, tmp_path, prefix=("qemu-aarch64", "-cpu", cpu))
    assert relative(arm, x86) <= tolerance


def test_the_committed_fixtures_are_what_make_fixtures_writes(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "runtime" / "tests" / "make_fixtures.py"), str(tmp_path)],
                   check=True, capture_output=True)
    for committed in sorted(FIXTURES.glob("*.npy")):
        np.testing.assert_allclose(np.load(tmp_path / committed.name), np.load(committed), rtol=1e-6,
                                   atol=1e-7, err_msg=committed.name)
    for committed in sorted(FIXTURES.glob("*.safetensors")):
        assert ProgramEngine.from_file(tmp_path / committed.name).program == \
            ProgramEngine.from_file(committed).program, committed.name


def test_the_c_reader_computes_pythons_digest_over_any_metadata(cli, tmp_path):
    """The digest covers the metadata as Python's json.dumps writes it (sorted keys, ASCII escapes); the
    C reader writes it again from its parse: non-ASCII, astral (surrogate pairs), control characters,
    DEL, quotes and backslashes, and numbers as Python wrote them."""
    path = tmp_path / "lm.safetensors"
    vocabulary = ["é", "😀", 'a"b\\c', "\x01\t\n\r\b\f", "\x7f", "\x80\x9f", "ü/ß", "日本",
                  "\ud7ff\ue000\uffff"]
    save_sparse(pruned(WordLM()).eval(), path, example_inputs=(torch.zeros(5, 1, dtype=torch.long),),
                extra={"vocabulary": vocabulary, "numbers": [1e-05, 0.1, 2.5e-7, 1.0, -0.0, 1e300, 7]})
    result = subprocess.run([str(cli), str(path), "--info"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
