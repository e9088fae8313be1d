"""Drop-in inference modules on the sparse kernels, for any model: :func:`sparsify` and :func:`load_sparse`.

``sparsify(model)`` copies a model and replaces every ``nn.RNN``/``nn.GRU``/``nn.LSTM``, their cells and
``nn.Linear`` (exact types; a subclass may change ``forward``, so it stays as it is) by a module with the
same call signature and return values that runs on the kernels. Everything else in the model (embeddings,
norms, the user's own ``forward``) runs as before. ``load_sparse(model, path)`` does the same from a file
written by :func:`sparsernn.export.save_sparse`, after checking the file against the model.

The drop-ins compute PyTorch's equations in float32 on the CPU, for inference only: they hold numpy
matrices, not parameters, and refuse inputs that require gradients.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from sparsernn import kernels
from sparsernn.engine.lower import LoweringError, lower
from sparsernn.engine.program import ProgramEngine, SparseProgram
from sparsernn.engine.stack import RecurrentStack, as_kernel_matrix
from sparsernn.export import ExportedModel, ExportError, load_exported, module_options
from sparsernn.kernels import SparseMatrix

_CELLS = {"LSTM": "lstm", "LSTMCell": "lstm", "GRU": "gru", "GRUCell": "gru"}


class _SparseModule(nn.Module):
    """What the drop-ins share: the replaced module's options as attributes, input checks, a repr."""

    def __init__(self, name: str, options: dict, threads: int, backend: str):
        super().__init__()
        self.module_name, self.options, self.threads = name or type(self).__name__, options, threads
        self.backend = kernels.backend(backend)
        for key, value in options.items():
            if key != "type":
                setattr(self, key, value)  # hidden_size, batch_first, in_features, ...: as on the original

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.options.items())

    def _array(self, tensor: torch.Tensor, what: str) -> np.ndarray:
        """A float32 CPU tensor as numpy; refuses anything that needs gradients."""
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{self.module_name}: {what} must be a tensor, got {type(tensor).__name__}")
        if torch.is_grad_enabled() and tensor.requires_grad:
            raise RuntimeError(f"{self.module_name}: sparsified modules run inference only, and {what} "
                               "requires gradients; call the model under torch.no_grad() or "
                               "torch.inference_mode() (train the PyTorch model, then sparsify it)")
        if tensor.device.type != "cpu" or tensor.dtype != torch.float32:
            raise TypeError(f"{self.module_name}: {what} must be a float32 CPU tensor, got {tensor.dtype} "
                            f"on {tensor.device}")
        return tensor.detach().numpy()


class SparseLinear(_SparseModule):
    """``nn.Linear`` on the kernels: ``(..., in_features)`` -> ``(..., out_features)``."""

    def __init__(self, name: str, options: dict, weight: SparseMatrix, bias: np.ndarray | None, *,
                 threads: int = 1, backend: str = "auto"):
        super().__init__(name, options, threads, backend)
        self.weight_matrix, self.bias_vector = weight, bias

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (PyTorch's argument name)
        x = self._array(input, "input")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self.module_name}: input of shape {tuple(x.shape)} does not end in "
                             f"in_features = {self.in_features}")
        flat = np.ascontiguousarray(x.reshape(-1, self.in_features))  # (N, in)
        n = flat.shape[0]
        columns = flat.reshape(self.in_features, 1) if n == 1 else kernels.contiguous(flat.T)  # (in, N)
        out = kernels.spmm(self.weight_matrix, columns, self.bias_vector, threads=self.threads,
                           backend_name=self.backend)  # (out, N)
        rows = out.reshape(1, -1) if n == 1 else kernels.contiguous(out.T)
        return torch.from_numpy(rows).reshape(*x.shape[:-1], self.out_features)


class _SparseRecurrent(_SparseModule):
    """A :class:`RecurrentStack` with PyTorch's state convention: ``(layers * directions, B, size)``."""

    def __init__(self, name: str, options: dict, stack: RecurrentStack, *, threads: int = 1,
                 backend: str = "auto"):
        super().__init__(name, options, threads, backend)
        self.stack, self.cell = stack, stack.cell

    def _state(self, hx, batch: int, batched: bool) -> list:
        """The stack's state from PyTorch's ``hx`` (h or, for LSTM, (h, c)), copied: never written back."""
        state = self.stack.initial_state(batch)
        if hx is None:
            return state
        if (self.cell == "lstm") != isinstance(hx, tuple):
            wanted = "a tuple (h_0, c_0)" if self.cell == "lstm" else "a tensor"
            raise TypeError(f"{self.module_name}: hx must be {wanted}")
        directions, sizes = len(state[0]), {"h_0": self.stack.output_size, "c_0": self.stack.hidden_size}
        arrays = []
        for what, part in zip(("h_0", "c_0"), hx if isinstance(hx, tuple) else (hx,), strict=False):
            array = self._array(part, what)
            array = array if batched else array[:, None]
            expected = (len(state) * directions, batch, sizes[what])
            if array.shape != expected:
                shape = expected if batched else (expected[0], expected[2])
                raise ValueError(f"{self.module_name}: {what} must have shape {shape}, "
                                 f"got {tuple(part.shape)}")
            arrays.append(array)
        for k in range(len(state) * directions):
            columns = [array[k].T.copy() for array in arrays]  # (size, B) each
            state[k // directions][k % directions] = (columns[0], columns[1] if len(columns) > 1 else None)
        return state

    def _final(self, state, batched: bool):
        """PyTorch's ``h_n`` (and ``c_n``) from the stack's state."""
        parts = [np.stack([pair[part].T for layer in state for pair in layer])
                 for part in range(2 if self.cell == "lstm" else 1)]  # (layers * directions, B, size)
        tensors = [torch.from_numpy(p if batched else np.ascontiguousarray(p[:, 0])) for p in parts]
        return tuple(tensors) if self.cell == "lstm" else tensors[0]

    def _run(self, x: np.ndarray, hx, batched: bool):
        """``x`` (T, B, features) -> output (T, B, directions * size) and the final state."""
        steps, batch, features = x.shape
        if features != self.input_size:
            raise ValueError(f"{self.module_name}: input has {features} features, "
                             f"input_size is {self.input_size}")
        state = self._state(hx, batch, batched)
        out = self.stack(np.ascontiguousarray(x.transpose(2, 0, 1)), state)  # (D * size, T, B)
        return out.transpose(1, 2, 0), state


class SparseRNN(_SparseRecurrent):
    """``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` on the kernels (any ``num_layers``, ``bidirectional``,
    ``batch_first``, ``bias``, ``proj_size``; unbatched and packed inputs; initial states)."""

    def flatten_parameters(self) -> None:
        """Nothing to flatten; kept so that forwards written for ``nn.LSTM`` keep working."""

    def forward(self, input, hx=None):  # noqa: A002 (PyTorch's argument name)
        if isinstance(input, PackedSequence):
            return self._packed(input, hx)
        x = self._array(input, "input")
        if x.ndim not in (2, 3):
            raise ValueError(f"{self.module_name}: input must be 2-D (unbatched) or 3-D, "
                             f"got shape {tuple(x.shape)}")
        batched = x.ndim == 3
        x = (x.transpose(1, 0, 2) if self.batch_first else x) if batched else x[:, None]  # (T, B, F)
        output, state = self._run(x, hx, batched)
        output = (output.transpose(1, 0, 2) if self.batch_first else output) if batched else output[:, 0]
        return torch.from_numpy(np.ascontiguousarray(output)), self._final(state, batched)

    def _packed(self, packed: PackedSequence, hx):
        """Each sequence on its own (its own length, its own final state), packed again in the input's
        order; ``hx`` and the returned states are in the batch's original order, as in PyTorch."""
        self._array(packed.data, "input")
        padded, lengths = pad_packed_sequence(packed)  # (T, B, F), original order
        x = padded.numpy()
        batch = x.shape[1]
        outputs = np.zeros((x.shape[0], batch, (2 if self.bidirectional else 1) * self.stack.output_size),
                           np.float32)
        states = []
        for b in range(batch):
            own = None
            if hx is not None:  # this sequence's column of the initial state
                own = tuple(h[:, b:b + 1] for h in hx) if isinstance(hx, tuple) else hx[:, b:b + 1]
            out, state = self._run(x[:int(lengths[b]), b:b + 1], own, True)
            outputs[:int(lengths[b]), b:b + 1] = out
            states.append(state)
        order = packed.sorted_indices if packed.sorted_indices is not None else torch.arange(batch)
        outputs = torch.from_numpy(outputs)
        data = torch.cat([outputs[t, order[:size]] for t, size in enumerate(packed.batch_sizes.tolist())])
        final = [self._final(state, True) for state in states]
        joined = (tuple(torch.cat(parts, dim=1) for parts in zip(*final, strict=True)) if self.cell == "lstm"
                  else torch.cat(final, dim=1))
        output = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        return output, joined


class SparseRNNCell(_SparseRecurrent):
    """``nn.RNNCell`` / ``nn.GRUCell`` / ``nn.LSTMCell`` on the kernels: one step, batched or not."""

    def forward(self, input, hx=None):  # noqa: A002 (PyTorch's argument name)
        x = self._array(input, "input")
        if x.ndim not in (1, 2):
            raise ValueError(f"{self.module_name}: input must be 1-D (unbatched) or 2-D, "
                             f"got shape {tuple(x.shape)}")
        batched = x.ndim == 2
        if hx is not None:  # a cell's state has no layer dimension
            hx = tuple(h[None] for h in hx) if isinstance(hx, tuple) else hx[None]
        _, state = self._run((x if batched else x[None])[None], hx, batched)  # one step of (1, B, F)
        final = self._final(state, batched)
        return tuple(part[0] for part in final) if isinstance(final, tuple) else final[0]


def _cell(options: dict) -> str:
    return _CELLS.get(options["type"]) or f"rnn_{options['nonlinearity']}"


def _drop_in(name: str, options: dict, tensors: dict, threads: int, backend: str) -> nn.Module:
    """The drop-in for one module, from its tensors (full state-dict names; arrays or SparseMatrix)."""
    prefix = f"{name}." if name else ""
    kind = options["type"]
    if kind == "Linear":
        bias = tensors.get(f"{prefix}bias")
        bias = None if bias is None else np.asarray(bias, np.float32)
        return SparseLinear(name, options, as_kernel_matrix(tensors[f"{prefix}weight"]), bias,
                            threads=threads, backend=backend)
    if kind.endswith("Cell"):  # a cell is a one-layer stack run for one step
        own = {f"{key}_l0": tensors[f"{prefix}{key}"]
               for key in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if f"{prefix}{key}" in tensors}
        stack = RecurrentStack.from_tensors(_cell(options), own, "", 1, False, threads=threads,
                                            backend=backend)
        return SparseRNNCell(name, options, stack, threads=threads, backend=backend)
    stack = RecurrentStack.from_tensors(_cell(options), tensors, prefix, options["num_layers"],
                                        options["bidirectional"], threads=threads, backend=backend)
    return SparseRNN(name, options, stack, threads=threads, backend=backend)


def _replace(model: nn.Module, tensors: dict, threads: int, backend: str) -> nn.Module:
    """``model`` (a copy) in eval mode, frozen, with every supported module replaced by its drop-in."""
    model.eval().requires_grad_(False)
    root = module_options(model)
    if root is not None:
        return _drop_in("", root, tensors, threads, backend)
    for name, module in list(model.named_modules(remove_duplicate=False)):
        options = module_options(module)
        if options is None:
            if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
                base = type(module).__mro__[1].__name__
                warnings.warn(f"{name}: {type(module).__name__} subclasses {base} and may change its "
                              "forward; left to PyTorch", stacklevel=3)
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, _drop_in(name, options, tensors, threads, backend))
    return model


def sparsify(model: nn.Module, *, threads: int = 1, backend: str = "auto",
             example_inputs: tuple | None = None, strict: bool = True) -> nn.Module:
    """A copy of ``model`` for inference on the sparse kernels (the original is untouched).

    Every ``nn.RNN``/``nn.GRU``/``nn.LSTM``, ``nn.RNNCell``/``nn.GRUCell``/``nn.LSTMCell`` and
    ``nn.Linear`` becomes a drop-in with the same call signature and return values; each matrix runs in
    the layout the kernels run fastest (CSR, the blocks it was pruned in, or dense blocks when it is
    dense). The copy is in eval mode with its remaining parameters frozen; call it under
    ``torch.no_grad()`` or ``torch.inference_mode()`` when its inputs come from elsewhere with gradients.
    ``threads``: OpenMP threads per product.

    With ``example_inputs`` (the forward's positional arguments for a whole sequence, a tuple) the whole
    forward becomes one program (:mod:`sparsernn.engine.program`): a :class:`SparseProgram` with the
    forward's signature whose streamed step (a call with one time step) is one compiled call, the
    recurrent state carried from call to call (``reset()`` starts a new sequence) unless the forward takes
    it as an argument. An operation the lowering does not know raises
    :class:`~sparsernn.engine.lower.LoweringError` naming it and its module; with ``strict=False`` it
    warns and returns the per-module copy instead.
    """
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    tensors = {name: tensor.detach().float().cpu().numpy() for name, tensor in model.state_dict().items()}
    if example_inputs is not None:
        program = _lowered(model, example_inputs, strict)
        if program is not None:
            return SparseProgram(ProgramEngine(program, tensors, threads=threads, backend=backend))
    replaced = {prefix for prefix, module in model.named_modules() if module_options(module) is not None}
    tensors = {name: array for name, array in tensors.items() if name.rpartition(".")[0] in replaced}
    return _replace(copy.deepcopy(model), tensors, threads, backend)


def _lowered(model: nn.Module, example_inputs, strict: bool) -> dict | None:
    """The model's program, or with ``strict=False`` None (and a warning) where it cannot be lowered."""
    try:
        return lower(model, example_inputs)
    except LoweringError as error:
        if strict:
            raise
        warnings.warn(f"{error}; running the model module by module instead (PyTorch between the sparse "
                      "modules, slower when streaming)", stacklevel=3)
        return None


def load_sparse(model: nn.Module, path: str | Path | ExportedModel, *, threads: int = 1,
                backend: str = "auto") -> nn.Module:
    """Load a :func:`~sparsernn.export.save_sparse` file (or what :func:`~sparsernn.export.load_exported`
    read from one) into ``model`` (a freshly built instance of the class that was saved) and return its
    :func:`sparsify` copy, with the matrices in the file's layout; a file with a program (saved with
    ``example_inputs``) gives the :class:`SparseProgram` that runs it.

    Every tensor name and shape and every replaced module's options must match the file; a mismatch
    raises :class:`~sparsernn.export.ExportError` naming the tensor or module. ``model`` keeps the
    loaded (dense) weights, so it can serve as the PyTorch reference.
    """
    exported = path if isinstance(path, ExportedModel) else load_exported(path)
    path = exported.path
    ties = exported.metadata.get("ties", {})
    state = model.state_dict()
    in_file = set(exported.tensors) | set(ties)
    for name in state:
        if name not in in_file:
            raise ExportError(f"{path}: the model's tensor {name} is not in the file")
    extra = sorted(in_file - set(state))
    if extra:
        raise ExportError(f"{path}: tensor {extra[0]} in the file is not in the model")
    stored = {name: exported.tensors[ties.get(name, name)] for name in state}
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(stored[name].shape):
            raise ExportError(f"{path}: tensor {name} has shape {tuple(stored[name].shape)} in the file, "
                              f"{tuple(tensor.shape)} in the model")
    _check_modules(path, exported.metadata.get("modules", {}), model)
    dense = {name: torch.from_numpy(t.to_dense() if isinstance(t, SparseMatrix) else np.array(t))
             for name, t in stored.items()}
    with torch.no_grad():
        model.load_state_dict(dense)
    if "program" in exported.metadata:
        return SparseProgram(ProgramEngine(exported.metadata["program"], stored, threads=threads,
                                           backend=backend))
    return _replace(copy.deepcopy(model), stored, threads, backend)


def _check_modules(path, recorded: dict, model: nn.Module) -> None:
    present = {prefix: options for prefix, module in model.named_modules()
               if (options := module_options(module)) is not None}
    for name in sorted(set(recorded) | set(present)):
        shown = name or "(the model itself)"
        if name not in present:
            raise ExportError(f"{path}: module {shown} ({recorded[name]['type']}) in the file is not in "
                              "the model")
        if name not in recorded:
            raise ExportError(f"{path}: the model's module {shown} ({present[name]['type']}) is not in "
                              "the file")
        for key in sorted(set(recorded[name]) | set(present[name])):
            if recorded[name].get(key) != present[name].get(key):
                raise ExportError(f"{path}: module {shown}: {key} is {recorded[name].get(key)!r} in the "
                                  f"file, {present[name].get(key)!r} in the model")
