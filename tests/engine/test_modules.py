"""sparsify(): every drop-in against PyTorch's own module, for each kind and option, with states carried."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from sparsernn import kernels, sparsify
from sparsernn.engine import SparseLinear, SparseRNN, SparseRNNCell

BACKENDS = ["reference"] + (["c"] if kernels.backend() == "c" else [])
ATOL = 1e-4


def pruned(module, keep=0.2, block=None, seed=0):
    """``module`` with about ``1 - keep`` of each weight zeroed (in ``block`` row blocks if given)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("weight"):
                if block:
                    rows = torch.rand(p.shape[0] // block, p.shape[1], generator=generator) < keep
                    p.mul_(rows.repeat_interleave(block, dim=0).float())
                else:
                    p.mul_((torch.rand(p.shape, generator=generator) < keep).float())
    return module


def assert_close(actual, expected):
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_close(a, e)
    else:
        assert actual.shape == expected.shape and actual.dtype == expected.dtype
        np.testing.assert_allclose(actual.numpy(), expected.detach().numpy(), atol=ATOL)


RECURRENT = [
    (nn.RNN, {"nonlinearity": "tanh"}),
    (nn.RNN, {"nonlinearity": "relu"}),
    (nn.GRU, {}),
    (nn.LSTM, {}),
    (nn.LSTM, {"proj_size": 5}),
]
OPTIONS = [
    {"num_layers": 1},
    {"num_layers": 2, "bidirectional": True, "batch_first": True, "bias": False},
    {"num_layers": 3, "bidirectional": True},
]


def initial_state(module, batch, generator):
    directions = 2 if module.bidirectional else 1
    size = module.proj_size or module.hidden_size if isinstance(module, nn.LSTM) else module.hidden_size
    h = torch.randn(module.num_layers * directions, batch, size, generator=generator)
    if isinstance(module, nn.LSTM):
        return h, torch.randn(module.num_layers * directions, batch, module.hidden_size, generator=generator)
    return h


@pytest.mark.parametrize("kind, kind_options", RECURRENT)
@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_recurrent_layers_match_pytorch(kind, kind_options, options, backend):
    torch.manual_seed(0)
    module = pruned(kind(6, 16, **kind_options, **options).eval())
    fast = sparsify(module, threads=2, backend=backend)
    assert isinstance(fast, SparseRNN) and fast.hidden_size == 16
    generator = torch.Generator().manual_seed(1)
    batch_first = options.get("batch_first", False)
    x = torch.randn(3, 7, 6, generator=generator)  # (B, T, F) with batch_first, else (T, B, F)
    hx = initial_state(module, 3 if batch_first else 7, generator)
    hx_before = tuple(h.clone() for h in hx) if isinstance(hx, tuple) else hx.clone()
    with torch.no_grad():
        assert_close(fast(x), module(x))
        assert_close(fast(x, hx), module(x, hx))
        if not module.bidirectional:  # streaming: one step per call, each call's state into the next
            state, outputs, time = hx, [], 1 if batch_first else 0
            for t in range(x.shape[time]):
                out, state = fast(x.narrow(time, t, 1), state)
                outputs.append(out)
            expected, expected_state = module(x, hx)
            assert_close(torch.cat(outputs, dim=time), expected)
            assert_close(state, expected_state)
        # unbatched: (T, F) and a state without the batch dimension
        single = x[0] if batch_first else x[:, 0]
        single_hx = tuple(h[:, 0] for h in hx) if isinstance(hx, tuple) else hx[:, 0]
        assert_close(fast(single, single_hx), module(single, single_hx))
    assert_close(hx, hx_before)  # the caller's state is never written


@pytest.mark.parametrize("kind, nonlinearity",
                         [(nn.RNNCell, "tanh"), (nn.RNNCell, "relu"), (nn.GRUCell, None),
                          (nn.LSTMCell, None)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cells_match_pytorch(kind, nonlinearity, bias, backend):
    torch.manual_seed(0)
    options = {"nonlinearity": nonlinearity} if nonlinearity else {}
    cell = pruned(kind(6, 16, bias=bias, **options).eval())
    fast = sparsify(cell, backend=backend)
    assert isinstance(fast, SparseRNNCell)
    x = torch.randn(5, 4, 6)
    with torch.no_grad():
        assert_close(fast(x[0]), cell(x[0]))
        state = expected = None
        for t in range(5):  # state carried over steps
            state, expected = fast(x[t], state), cell(x[t], expected)
            assert_close(state, expected)
        single = tuple(s[1] for s in expected) if isinstance(expected, tuple) else expected[1]
        assert_close(fast(x[0, 1], single), cell(x[0, 1], single))  # unbatched input and state


@pytest.mark.parametrize("shape", [(6,), (1, 6), (9, 6), (2, 3, 6), (2, 2, 3, 6), (0, 6)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_takes_any_leading_shape(shape, bias):
    torch.manual_seed(0)
    linear = pruned(nn.Linear(6, 11, bias=bias))
    fast = sparsify(linear)
    assert isinstance(fast, SparseLinear) and fast.out_features == 11
    x = torch.randn(shape)
    with torch.no_grad():
        assert_close(fast(x), linear(x))


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequences_match_pytorch(kind, enforce_sorted):
    torch.manual_seed(0)
    module = pruned(kind(6, 16, num_layers=2, bidirectional=True, batch_first=True).eval())
    fast = sparsify(module)
    lengths = torch.tensor([7, 5, 5, 2] if enforce_sorted else [2, 7, 5, 5])
    x = torch.randn(4, 7, 6)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
    hx = initial_state(module, 4, torch.Generator().manual_seed(2))
    with torch.no_grad():
        out, state = fast(packed, hx)
        expected_out, expected_state = module(packed, hx)
    assert torch.equal(out.batch_sizes, expected_out.batch_sizes)
    assert_close(out.data, expected_out.data)
    assert_close(state, expected_state)


class UserModel(nn.Module):
    """A user's own model: embedding, norm, their own code around an LSTM and two linear layers."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(50, 12)
        self.norm = nn.LayerNorm(12)
        self.lstm = nn.LSTM(12, 24, num_layers=2, batch_first=True)
        self.heads = nn.ModuleList([nn.Linear(24, 50), nn.Linear(24, 16)])
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, tokens, state=None):
        self.lstm.flatten_parameters()  # common in user code written for cuDNN
        hidden, state = self.lstm(self.norm(self.embedding(tokens)), state)
        return self.heads[0](hidden) * self.scale + self.heads[1](hidden).mean(-1, keepdim=True), state


def test_user_model_runs_as_before_and_the_original_is_untouched():
    torch.manual_seed(0)
    model = UserModel()
    pruned(model.lstm, block=8)  # 8x1 blocks: the fast block layout
    pruned(model.heads[0], keep=0.1)
    fast = sparsify(model)
    assert type(model.lstm) is nn.LSTM and model.lstm.weight_ih_l0.requires_grad  # original untouched
    assert model.training and not fast.training
    assert isinstance(fast.lstm, SparseRNN) and all(isinstance(h, SparseLinear) for h in fast.heads)
    assert fast.lstm.stack.layers[1][0].weight_hh.block == (8, 1)  # as pruned
    assert fast.heads[0].weight_matrix.block == (1, 1)  # unstructured: CSR
    assert fast.heads[1].weight_matrix.block == (16, 1)  # dense: dense blocks
    tokens = torch.randint(0, 50, (3, 10))
    model.eval()
    with torch.no_grad():
        assert_close(fast(tokens), model(tokens))
    assert_close(fast(tokens), model(tokens))  # parameters of the copy are frozen: no no_grad needed


def test_inference_only():
    fast = sparsify(nn.GRU(4, 8))
    x = torch.randn(3, 1, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference only.*torch.no_grad"):
        fast(x)
    with torch.no_grad():
        fast(x)
    with torch.inference_mode():
        fast(torch.randn(3, 1, 4))


def test_clear_errors_name_the_module():
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.LSTM(8, 8))
    fast = sparsify(model)
    with pytest.raises(ValueError, match=r"^0: input of shape \(2, 5\) does not end in in_features = 4"):
        fast[0](torch.randn(2, 5))
    with pytest.raises(TypeError, match="^0: input must be a float32 CPU tensor, got torch.float64"):
        fast[0](torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="^2: input has 4 features, input_size is 8"):
        fast[2](torch.randn(3, 1, 4))
    with pytest.raises(ValueError, match=r"^2: c_0 must have shape \(1, 1, 8\)"):
        fast[2](torch.randn(3, 1, 8), (torch.zeros(1, 1, 8), torch.zeros(1, 2, 8)))
    with pytest.raises(TypeError, match=r"^2: hx must be a tuple \(h_0, c_0\)"):
        fast[2](torch.randn(3, 1, 8), torch.zeros(1, 1, 8))


def test_subclasses_stay_pytorch_with_a_warning():
    class MyLSTM(nn.LSTM):
        pass

    model = nn.Sequential(MyLSTM(4, 8))
    with pytest.warns(UserWarning, match="0: MyLSTM subclasses LSTM"):
        fast = sparsify(model)
    assert type(fast[0]) is MyLSTM
