"""sparsify(model, example_inputs=...): the whole forward as one program, against PyTorch's own model.

Each model is pruned, lowered, and run whole and streamed one step per call (state carried); every output
must equal the masked PyTorch model's, for both backends.
"""

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from sparsernn import kernels, load_sparse, save_sparse, sparsify
from sparsernn.engine import LoweringError, ProgramEngine, SparseProgram
from sparsernn.export import ExportError, _digest


def pruned(model: nn.Module, keep: float = 0.1, seed: int = 0) -> nn.Module:
    """``model`` with about ``1 - keep`` of every weight matrix zeroed at random (embeddings included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rpartition(".")[2].startswith("weight") and p.dim() == 2:
                p.mul_((torch.rand(p.shape, generator=generator) < keep).float())
    return model

BACKENDS = ["reference"] + (["c"] if kernels.backend() == "c" else [])
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


class WordLM(nn.Module):
    """A plain user-written LM: Embedding -> recurrent layers -> Linear (logits only)."""

    def __init__(self, cell=nn.LSTM, vocab=40, layers=2, **options):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 12)
        self.rnn = cell(12, 16, layers, **options)
        self.dropout = nn.Dropout(0.3)
        self.decoder = nn.Linear(self.rnn.proj_size or 16 if cell is nn.LSTM else 16, vocab)

    def forward(self, tokens):
        output, _ = self.rnn(self.dropout(self.embedding(tokens)))  # (T, B, H)
        return self.decoder(self.dropout(output))  # (T, B, V)


class RNNModel(nn.Module):
    """pytorch/examples' word_language_model: the state passed in and returned, logits viewed (T*B, V)."""

    def __init__(self, vocab=40):
        super().__init__()
        self.ntoken = vocab
        self.encoder = nn.Embedding(vocab, 12)
        self.rnn = nn.LSTM(12, 16, 2)
        self.decoder = nn.Linear(16, vocab)

    def forward(self, input, hidden):  # noqa: A002 (the example's names)
        output, hidden = self.rnn(self.encoder(input), hidden)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return nn.functional.log_softmax(decoded, dim=1), hidden


class Tagger(nn.Module):
    """A bidirectional LSTM tagger with projections and LayerNorm, batch first."""

    def __init__(self, vocab=40, tags=5):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 12)
        self.rnn = nn.LSTM(12, 16, 2, bidirectional=True, proj_size=6, batch_first=True)
        self.norm = nn.LayerNorm(12)
        self.out = nn.Linear(12, tags)

    def forward(self, tokens):
        hidden, _ = self.rnn(self.embedding(tokens))  # (B, T, 2 * 6)
        return self.out(torch.relu(self.norm(hidden))).log_softmax(-1)


class Mixer(nn.Module):
    """Features in; a GRU; the ops besides products: chunk, cat, arithmetic, sigmoid, tanh, softmax."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(8, 10, batch_first=True)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 25))
        self.gate = nn.Linear(25, 25)

    def forward(self, features):
        hidden, _ = self.rnn(features)  # (B, T, 10)
        left, right = hidden.chunk(2, dim=-1)
        joined = torch.cat([hidden, torch.tanh(left) * right, left - 0.5, right / 2.0], dim=-1)  # (B, T, 25)
        gated = torch.sigmoid(self.gate(joined)) * self.scale + joined
        return torch.softmax(gated[..., 2:18], dim=-1), hidden[..., 3]


def _streamed(fast, inputs, time_axis=0):
    """``fast`` called one step at a time (state carried), outputs joined along time."""
    fast.reset()
    steps = [fast(step) for step in inputs.split(1, dim=time_axis)]
    return torch.cat(steps, dim=time_axis)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("cell", "options"), [(nn.RNN, {}), (nn.RNN, {"nonlinearity": "relu"}), (nn.GRU, {}),
                                               (nn.LSTM, {}), (nn.LSTM, {"proj_size": 6})])
def test_a_user_lm_runs_whole_and_streamed_as_pytorch(cell, options, backend):
    torch.manual_seed(0)
    model = pruned(WordLM(cell, **options)).eval()
    tokens = torch.randint(0, 40, (9, 3))
    fast = sparsify(model, example_inputs=(tokens[:5],), backend=backend)
    assert isinstance(fast, SparseProgram) and fast.engine.program["mode"] == "stream"
    with torch.no_grad():
        expected = model(tokens)
        torch.testing.assert_close(_streamed(fast, tokens), expected, **TOLERANCE)
        fast.reset()
        torch.testing.assert_close(fast(tokens), expected, **TOLERANCE)
        # the state carries: the second half continues the first
        fast.reset()
        first, second = fast(tokens[:4]), fast(tokens[4:])
    torch.testing.assert_close(torch.cat([first, second]), expected, **TOLERANCE)


@pytest.mark.parametrize("batch", [1, 3])
def test_a_streamed_step_is_one_compiled_call(monkeypatch, batch):
    if "c" not in BACKENDS:
        pytest.skip("the compiled kernels are not built")
    model = pruned(WordLM(nn.GRU)).eval()
    fast = sparsify(model, example_inputs=(torch.zeros(5, batch + 1, dtype=torch.long),))
    compiled, calls = kernels._compiled(), []

    class Counting:
        """The extension, its entry points that compute counted."""

        def __getattr__(self, name):
            attribute = getattr(compiled, name)
            if name not in ("run", "step", "spmm", "recurrent"):
                return attribute
            return lambda *arguments: calls.append(name) or attribute(*arguments)

    monkeypatch.setattr(kernels, "_compiled", Counting)
    with torch.no_grad():
        first = fast(torch.zeros(1, batch, dtype=torch.long))  # builds the step program
        calls.clear()
        second = fast(torch.ones(1, batch, dtype=torch.long))
    assert calls == ["step" if batch == 1 else "run"]
    fast.reset()
    with torch.no_grad():
        expected = model(torch.tensor([[0] * batch, [1] * batch]))
    torch.testing.assert_close(torch.cat([first, second]), expected, **TOLERANCE)


def test_repeated_streamed_steps_take_the_short_path_and_keep_every_check():
    """Calls with the last streamed step's shapes and dtypes go straight to its compiled call: their outputs
    stay the model's and are fresh tensors each call; other inputs (another shape; features that are not
    contiguous or need a gradient) take the full path and its checks."""
    if "c" not in BACKENDS:
        pytest.skip("the compiled kernels are not built")
    torch.manual_seed(2)
    model = pruned(WordLM(nn.LSTM)).eval()
    tokens = torch.randint(0, 40, (8, 1))
    fast = sparsify(model, example_inputs=(tokens[:5],))
    with torch.no_grad():
        expected = model(tokens)
        steps = [fast(tokens[t:t + 1]) for t in range(6)]
        assert fast._last is not None
        kept = steps[0].clone()
        steps += [fast(tokens.t().contiguous().t()[t:t + 1]) for t in (6, 7)]  # views of another tensor
    torch.testing.assert_close(torch.cat(steps), expected, **TOLERANCE)
    torch.testing.assert_close(steps[0], kept)  # later calls wrote into fresh tensors
    fast.reset()
    with torch.no_grad():
        torch.testing.assert_close(fast(tokens), expected, **TOLERANCE)  # another shape: the full path
    # features in, streamed at batch 1: a strided step (not contiguous) after contiguous ones
    mixer = Mixer().eval()
    features = torch.randn(1, 4, 16)[..., ::2]
    fast = sparsify(mixer, example_inputs=(features.contiguous(),))
    with torch.no_grad():
        expected = mixer(features)
        steps = [fast(features[:, t:t + 1].contiguous()) for t in range(3)] + [fast(features[:, 3:4])]
    assert fast._last is not None and not features[:, 3:4].is_contiguous()
    for k in range(2):
        torch.testing.assert_close(torch.cat([s[k] for s in steps], dim=1), expected[k], **TOLERANCE)
    with pytest.raises(RuntimeError, match="inference only"):
        fast(features[:, :1].contiguous().requires_grad_())


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_passed_in_the_forward_is_used_and_returned_as_pytorch(backend):
    torch.manual_seed(1)
    model = pruned(RNNModel()).eval()
    hidden = (torch.randn(2, 2, 16), torch.randn(2, 2, 16))
    tokens = torch.randint(0, 40, (6, 2))
    fast = sparsify(model, example_inputs=(tokens, hidden), backend=backend)
    with torch.no_grad():
        expected, expected_hidden = model(tokens[:3], hidden)
        got, got_hidden = fast(tokens[:3], hidden)
        torch.testing.assert_close(got, expected, **TOLERANCE)
        torch.testing.assert_close(got_hidden, expected_hidden, **TOLERANCE)
        # fed back, one step at a time, as a streaming caller does
        for t in range(3, 6):
            expected, expected_hidden = model(tokens[t:t + 1], expected_hidden)
            got, got_hidden = fast(tokens[t:t + 1], got_hidden)
            torch.testing.assert_close(got, expected, **TOLERANCE)
            torch.testing.assert_close(got_hidden, expected_hidden, **TOLERANCE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bidirectional_projected_tagger_with_layer_norm_runs_whole_sequences(backend):
    torch.manual_seed(2)
    model = pruned(Tagger()).eval()
    tokens = torch.randint(0, 40, (3, 7))
    fast = sparsify(model, example_inputs=(tokens,), backend=backend)
    assert fast.engine.program["mode"] == "whole"
    ops = [op["op"] for op in fast.engine.program["ops"]]
    assert ops == ["embedding", "rnn", "layer_norm", "relu", "linear", "log_softmax"]
    with torch.no_grad():
        for length in (7, 4, 11):  # any length; each call a sequence of its own
            sequence = tokens.repeat(1, 2)[:, :length]
            torch.testing.assert_close(fast(sequence), model(sequence), **TOLERANCE)
    with pytest.raises(ValueError, match="whole sequences only"):
        fast.engine.stream([np.zeros((2, 1, 3), np.int64)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_features_in_and_the_ops_besides_products(backend):
    torch.manual_seed(3)
    model = Mixer().eval()
    features = torch.randn(2, 6, 8)
    fast = sparsify(model, example_inputs=(features[:, :4],), backend=backend)
    ops = {op["op"] for op in fast.engine.program["ops"]}
    assert {"copy", "tanh", "mul", "sub", "div", "sigmoid", "add", "softmax"} <= ops
    with torch.no_grad():
        expected = model(features)
        torch.testing.assert_close(fast(features), expected, **TOLERANCE)
        fast.reset()
        steps = [fast(step) for step in features.split(1, dim=1)]
    for k in range(2):
        torch.testing.assert_close(torch.cat([s[k] for s in steps], dim=1), expected[k], **TOLERANCE)


class PackedTagger(nn.Module):
    """examples/gru_tagger.py's form: a bidirectional GRU over a padded batch packed by its lengths."""

    def __init__(self, vocab=40):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 12, padding_idx=0)
        self.gru = nn.GRU(12, 16, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(32, 3)

    def forward(self, tokens, lengths):  # (B, T), (B,)
        packed = pack_padded_sequence(self.embedding(tokens), lengths, batch_first=True, enforce_sorted=False)
        hidden, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True)
        return self.out(hidden)


class PackedLM(nn.Module):
    """A unidirectional LSTM on a time-major batch packed sorted, its state given and returned."""

    def __init__(self, vocab=40):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 12)
        self.rnn = nn.LSTM(12, 16, 2)
        self.out = nn.Linear(16, vocab)

    def forward(self, tokens, lengths, state):
        packed = pack_padded_sequence(self.embedding(tokens), lengths)
        output, state = self.rnn(packed, state)
        return self.out(pad_packed_sequence(output)[0]).log_softmax(-1), state


class PackedProjected(nn.Module):
    """A bidirectional projected LSTM packed time-major, its final states returned (PyTorch restores their
    batch order)."""

    def __init__(self, vocab=40):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 12)
        self.rnn = nn.LSTM(12, 16, 2, bidirectional=True, proj_size=5)
        self.out = nn.Linear(10, 3)

    def forward(self, tokens, lengths):  # (T, B), (B,)
        output, (h, c) = self.rnn(pack_padded_sequence(self.embedding(tokens), lengths, enforce_sorted=False))
        return self.out(torch.tanh(pad_packed_sequence(output)[0])), h, c


def _batch(steps: int, batch: int, *, sort: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (batch, steps), zero past each of the batch's lengths (the longest all ``steps``)."""
    lengths = torch.randint(1, steps + 1, (batch,))
    lengths[batch // 2] = steps
    if sort:
        lengths = lengths.sort(descending=True).values
    tokens = torch.randint(1, 40, (batch, steps)) * (torch.arange(steps) < lengths[:, None])
    return tokens, lengths


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_sequences_run_each_column_over_its_own_length_as_pytorch(backend):
    torch.manual_seed(6)
    model = pruned(PackedTagger()).eval()
    fast = sparsify(model, example_inputs=_batch(7, 3), backend=backend)
    program = fast.engine.program
    assert (program["version"], program["mode"]) == (2, "whole")
    assert [op["op"] for op in program["ops"]] == ["embedding", "rnn", "linear"]
    assert program["ops"][1]["lengths"] == "lengths" and program["inputs"][1]["lengths"] is True
    with torch.no_grad():
        for steps, batch in ((7, 3), (12, 5), (4, 1)):
            tokens, lengths = _batch(steps, batch)
            torch.testing.assert_close(fast(tokens, lengths), model(tokens, lengths), **TOLERANCE)
        with pytest.raises(ValueError, match="the longest all 12"):
            fast(*_batch(12, 2)[:1], torch.tensor([3, 5]))
    # a time-major LSTM packed sorted, its state in and out (the state is reordered to the sorted batch)
    torch.manual_seed(7)
    model = pruned(PackedLM()).eval()
    state = (torch.randn(2, 4, 16), torch.randn(2, 4, 16))
    tokens, lengths = _batch(6, 4, sort=True)
    fast = sparsify(model, example_inputs=(tokens.T, lengths, state), backend=backend)
    with torch.no_grad():
        got, got_state = fast(tokens.T, lengths, state)
        expected, expected_state = model(tokens.T, lengths, state)
    torch.testing.assert_close(got, expected, **TOLERANCE)
    for part in range(2):
        torch.testing.assert_close(got_state[part], expected_state[part], **TOLERANCE)
    with pytest.raises(ValueError, match="packed sequences: it runs whole sequences only"):
        fast.engine.stream([tokens.T.numpy()[:, None], lengths.numpy()[None], None])
    model = pruned(PackedProjected()).eval()
    fast = sparsify(model, example_inputs=(tokens.T, lengths), backend=backend)
    tokens, lengths = _batch(9, 5)
    with torch.no_grad():
        for got, expected in zip(fast(tokens.T, lengths), model(tokens.T, lengths), strict=True):
            torch.testing.assert_close(got, expected, **TOLERANCE)


class SortsAndKeeps(PackedTagger):
    def forward(self, tokens, lengths):
        lengths, order = lengths.sort(descending=True)  # sorted here, never restored
        return super().forward(tokens.index_select(0, order), lengths)


class LengthsFromTokens(PackedTagger):
    def forward(self, tokens):
        return super().forward(tokens, (tokens != 0).sum(1))


def test_packed_sequences_that_cannot_be_a_program_are_refused():
    tokens, lengths = _batch(7, 3)
    with pytest.raises(LoweringError, match="an output whose batch is in another order"):
        sparsify(SortsAndKeeps().eval(), example_inputs=(tokens, lengths))
    with pytest.raises(LoweringError, match="aten.ne.Scalar: operation not supported"):
        sparsify(LengthsFromTokens().eval(), example_inputs=(tokens,))


class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        hidden, _ = self.rnn(x)
        return self.head(torch.cumsum(hidden, dim=-1))


def test_an_unknown_op_names_itself_and_its_module_and_strict_false_falls_back():
    model = Unknown().eval()
    x = torch.randn(5, 2, 4)
    with pytest.raises(LoweringError, match=r"\(the model's own forward\): aten.cumsum.default: operation"):
        sparsify(model, example_inputs=(x,))
    with pytest.warns(UserWarning, match="cumsum.*module by module"):
        fast = sparsify(model, example_inputs=(x,), strict=False)
    assert not isinstance(fast, SparseProgram)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), **TOLERANCE)


def test_example_inputs_whose_time_and_batch_agree_are_refused():
    with pytest.raises(LoweringError, match="time length and batch size are both 3"):
        sparsify(WordLM().eval(), example_inputs=(torch.zeros(3, 3, dtype=torch.long),))


def test_engine_stream_equals_run_and_the_state_resets():
    torch.manual_seed(4)
    model = pruned(WordLM(nn.GRU)).eval()
    tokens = torch.randint(0, 40, (8, 1))
    engine = sparsify(model, example_inputs=(tokens,)).engine
    ids = tokens.numpy()[:, None, :]  # (T, 1, n)
    streamed = engine.stream([ids])[0]
    engine.reset()
    whole = engine.run([ids])[0]
    np.testing.assert_allclose(streamed, whole, **TOLERANCE)
    with torch.no_grad():
        np.testing.assert_allclose(whole.transpose(0, 2, 1), model(tokens).numpy(), **TOLERANCE)


# -- the program in the file ------------------------------------------------------------------------

def test_a_saved_program_loads_with_and_without_the_model_class(tmp_path):
    torch.manual_seed(5)
    model = pruned(RNNModel()).eval()
    tokens = torch.randint(0, 40, (6, 1))
    hidden = (torch.zeros(2, 1, 16), torch.zeros(2, 1, 16))
    path = tmp_path / "lm.safetensors"
    save_sparse(model, path, example_inputs=(tokens, hidden))
    loaded = load_sparse(RNNModel(), path)
    assert isinstance(loaded, SparseProgram)
    with torch.no_grad():
        expected = model(tokens, hidden)
        torch.testing.assert_close(loaded(tokens, hidden), expected, **TOLERANCE)
    engine = ProgramEngine.from_file(path)
    logits = engine.stream([tokens.numpy()[:, None, :], None, None])[0]  # (T*B, V) rows per step
    np.testing.assert_allclose(logits.reshape(6, -1), expected[0].numpy(), **TOLERANCE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_int8_values_stream_1000_steps_near_pytorch_and_every_batch_computes_alike(tmp_path, cell, backend):
    """A file of int8 values, streamed 1,000 steps from a fresh state: within 1% (of the largest logit)
    of the float32 PyTorch model at every step; the whole sequence at once and a batch of 3 sequences
    compute what streaming one sequence does (every product's columns quantized on their own)."""
    torch.manual_seed(9)
    model = pruned(WordLM(cell)).eval()
    tokens = torch.randint(0, 40, (1000, 3))
    path = tmp_path / "lm.safetensors"
    save_sparse(model, path, values="int8", example_inputs=(tokens[:5, :1],))
    program = load_sparse(WordLM(cell), path, backend=backend)
    with torch.no_grad():
        streamed = _streamed(program, tokens[:, :1])
        expected = model(tokens[:, :1])
        program.reset()
        whole = program(tokens[:, :1])
        program.reset()
        batch = program(tokens)
    worst = (streamed - expected).abs().amax(dim=(1, 2)) / expected.abs().max()
    assert float(worst.max()) < 1e-2
    torch.testing.assert_close(whole, streamed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch[:, :1], streamed, atol=1e-5, rtol=1e-5)


def _rewrite(path, edit):
    """The file at ``path`` with its metadata changed by ``edit`` and the digest made to match again."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(path), framework="numpy") as handle:
        metadata = json.loads(handle.metadata()["sparsernn"])
    tensors = load_file(str(path))
    edit(metadata)
    metadata["sha256"] = _digest(tensors, metadata)
    save_file(tensors, str(path), metadata={"sparsernn": json.dumps(metadata)})


def test_format_2_files_still_load_and_the_program_is_checked(tmp_path):
    model = pruned(WordLM(nn.GRU)).eval()
    tokens = torch.randint(0, 40, (6, 1))
    path = tmp_path / "lm.safetensors"
    save_sparse(model, path)  # no program
    _rewrite(path, lambda m: m.update(format=2))
    with torch.no_grad():
        torch.testing.assert_close(load_sparse(WordLM(nn.GRU), path)(tokens), model(tokens), **TOLERANCE)
    save_sparse(model, path, example_inputs=(tokens,))
    _rewrite(path, lambda m: m["program"]["ops"][2].update(weight="rnn.weight_hh_l0"))
    with pytest.raises(ExportError, match=r"program: op 2 \('linear', module 'decoder'\): bias decoder.bias "
                                          r"does not hold 48 values"):
        load_sparse(WordLM(nn.GRU), path)
    save_sparse(model, path, example_inputs=(tokens,))
    _rewrite(path, lambda m: m["program"]["values"].update(linear=7))
    with pytest.raises(ExportError, match=r"op 2 \('linear'.*holds 7 features, the op computes 40"):
        ProgramEngine.from_file(path)


def test_lengths_are_checked_on_load(tmp_path):
    path = tmp_path / "tagger.safetensors"
    example = _batch(7, 3)
    only_rnn = "lengths are read by rnn ops only"
    for edit, message in [(lambda p: p.update(version=1), "lengths .program version 2."),
                          (lambda p: p["ops"][1].update(lengths="tokens"), only_rnn),
                          (lambda p: p["ops"][2].update(x="lengths"), only_rnn),
                          (lambda p: p.update(mode="stream"), "needs mode whole")]:
        save_sparse(pruned(PackedTagger()).eval(), path, example_inputs=example)
        _rewrite(path, lambda m, edit=edit: edit(m["program"]))
        with pytest.raises(ExportError, match=message):
            ProgramEngine.from_file(path)


def test_an_altered_program_fails_the_digest(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "lm.safetensors"
    save_sparse(pruned(WordLM()).eval(), path, example_inputs=(torch.zeros(4, 1, dtype=torch.long),))
    with safe_open(str(path), framework="numpy") as handle:
        metadata = json.loads(handle.metadata()["sparsernn"])
    metadata["program"]["ops"][0]["weight"] = "decoder.weight"
    save_file(load_file(str(path)), str(path), metadata={"sparsernn": json.dumps(metadata)})
    with pytest.raises(ExportError, match="SHA-256"):
        ProgramEngine.from_file(path)


class UsesFinalState(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 6)

    def forward(self, x):
        output, hidden = self.rnn(x)
        return output + hidden[-1]  # the final state broadcast over the steps: not a step-by-step program


def test_an_op_on_the_final_state_is_refused():
    with pytest.raises(LoweringError, match="final state is not supported"):
        sparsify(UsesFinalState().eval(), example_inputs=(torch.randn(5, 2, 4),))
