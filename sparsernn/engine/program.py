"""Running a model's program: :class:`ProgramEngine` (numpy in and out) and :class:`SparseProgram` (the
drop-in module :func:`~sparsernn.engine.sparsify` returns with ``example_inputs``).

A program (built by :func:`sparsernn.engine.lower.lower`, stored in a format 3 or 4 file; docs/FORMAT.md) is a
list of ops over named values. Each value is, per step and batch column, a vector of ``values[name]``
features. Streaming runs every op once per step; a recurrent layer's state carries from one step to the
next (and from one call to the next), starting at zero. A whole sequence runs op by op over all its
steps (the only way for a bidirectional layer: programs with one are of mode ``"whole"``, and each call
starts from zero).

Arrays here are feature-major, as the kernels take them: a step's value is ``(features, n)`` for ``n``
batch columns, a sequence's ``(T, features, n)``; token ids are ``(n,)`` per step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import nn

from sparsernn import kernels
from sparsernn.engine.stack import Direction, RecurrentStack, as_kernel_matrix
from sparsernn.kernels import SparseMatrix


def _dense(tensor: SparseMatrix | np.ndarray) -> np.ndarray:
    array = tensor.to_dense() if isinstance(tensor, SparseMatrix) else tensor
    return np.ascontiguousarray(array, dtype=np.float32)


class ProgramEngine:
    """A program and its tensors (each a SparseMatrix or an array, by state-dict name), ready to run.

    ``stream(inputs)`` runs one step per row of a sequence, ``run(inputs)`` a whole sequence; both carry
    the recurrent state to the next call in mode ``"stream"``. ``reset()`` sets it back to zeros.
    """

    def __init__(self, program: dict, tensors: dict, *, threads: int = 1, backend: str = "auto"):
        self.program, self.threads, self.backend = program, threads, kernels.backend(backend)
        self.ops = program["ops"]
        self.sizes = program["values"]
        self.inputs, self.outputs = program["inputs"], program["outputs"]
        self._prepared = [self._prepare(op, tensors) for op in self.ops]
        self._sequence_inputs = [k for k, spec in enumerate(self.inputs)
                                 if "state" not in spec and "lengths" not in spec]
        self._state_inputs = [k for k, spec in enumerate(self.inputs) if "state" in spec]
        self._length_inputs = [k for k, spec in enumerate(self.inputs) if "lengths" in spec]
        self._streams = program["mode"] == "stream"
        self._state: list | None = None  # per op: a RecurrentStack state for rnn ops, else None
        self._batch = 0
        self._step = None  # (Program, input buffers, output buffers) for the current batch

    @classmethod
    def from_file(cls, path, *, threads: int = 1, backend: str = "auto") -> ProgramEngine:
        """The program of a format 3 or 4 file (:func:`~sparsernn.export.save_sparse` with
        ``example_inputs``), without the model's class."""
        from sparsernn.export import ExportError, load_exported

        exported = load_exported(path)
        if "program" not in exported.metadata:
            raise ExportError(f"{exported.path}: no program in this file; save it with "
                              "save_sparse(model, path, example_inputs=...)")
        tensors = dict(exported.tensors)
        tensors |= {name: tensors[stored] for name, stored in exported.metadata.get("ties", {}).items()}
        return cls(exported.metadata["program"], tensors, threads=threads, backend=backend)

    def _prepare(self, op: dict, tensors: dict):
        kind = op["op"]
        if kind == "embedding":
            return _dense(tensors[op["weight"]])
        if kind == "linear":
            bias = op.get("bias")
            return as_kernel_matrix(tensors[op["weight"]]), None if bias is None else _dense(tensors[bias])
        if kind == "rnn":
            gates = kernels.CELLS[op["cell"]]
            layers = []
            hidden = op["hidden_size"]
            for k, names in enumerate(op["weights"]):
                zeros = np.zeros(gates * hidden, np.float32)
                bias = [_dense(tensors[names[key]]) if key in names else zeros
                        for key in ("bias_ih", "bias_hh")]
                hr = names.get("weight_hr")
                direction = Direction(as_kernel_matrix(tensors[names["weight_ih"]], hidden), bias[0],
                                      as_kernel_matrix(tensors[names["weight_hh"]], hidden), bias[1],
                                      None if hr is None else as_kernel_matrix(tensors[hr]))
                if k % (2 if op["bidirectional"] else 1) == 0:
                    layers.append([])
                layers[-1].append(direction)
            return RecurrentStack(op["cell"], layers, threads=self.threads, backend=self.backend)
        if kind == "layer_norm":
            return tuple(None if op.get(key) is None else _dense(tensors[op[key]])
                         for key in ("weight", "bias"))
        if kind in kernels.BINARY:
            if op.get("weight") is not None:
                return _dense(tensors[op["weight"]]).reshape(-1)
            if op.get("scalar") is not None:
                return np.array([op["scalar"]], np.float32)
        return None

    # -- state -----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Zero state: the next call starts a new sequence (the compiled step is kept)."""
        for layers in self._state or ():
            for pair in layers or ():
                for h, c in pair:
                    h.fill(0)
                    if c is not None:
                        c.fill(0)

    def _ensure(self, batch: int) -> None:
        if self._state is None or self._batch != batch:
            self._state = [stack.initial_state(batch) if op["op"] == "rnn" else None
                           for op, stack in zip(self.ops, self._prepared, strict=True)]
            self._batch, self._step = batch, None

    def _set_state(self, spec: dict, array: np.ndarray) -> None:
        """An explicit state input (layers * directions * size, n) into the carried state."""
        layers = self._state[spec["op"]]
        part = 0 if spec["part"] == "h" else 1
        pieces = array.reshape(sum(len(layer) for layer in layers), -1, array.shape[-1])
        for k, piece in enumerate(pieces):
            layer = layers[k // len(layers[0])]
            layer[k % len(layers[0])][part][...] = piece

    def _get_state(self, spec: dict) -> np.ndarray:
        part = 0 if spec["part"] == "h" else 1
        return np.concatenate([pair[part] for layer in self._state[spec["op"]] for pair in layer])

    # -- running ---------------------------------------------------------------------------------
    def run(self, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        """The program over whole sequences: ``inputs`` in the program's order, each ``(T, features, n)``
        (token ids ``(T, 1, n)``; a state input ``(features, n)``, or None to carry the state on; the
        lengths of packed sequences ``(1, n)``); returns the outputs likewise (a state output is the state
        after the last step). One step in mode ``"stream"`` is one compiled call."""
        sequences = [inputs[k] for k in self._sequence_inputs]
        steps, batch = sequences[0].shape[0], sequences[0].shape[-1]
        lengths = {}
        for k in self._length_inputs:
            lengths[self.inputs[k]["name"]] = column = np.asarray(inputs[k]).reshape(-1).astype(np.int64)
            if column.shape != (batch,) or column.min() < 1 or column.max() != steps:
                raise ValueError(f"input {self.inputs[k]['name']}: one length per batch column ({batch}), "
                                 f"from 1 to the {steps} steps, the longest all {steps} (as "
                                 f"pad_packed_sequence pads to the longest), got {column.tolist()}")
        if not self._streams:
            self.reset()
        if self._state is None or self._batch != batch:
            self._ensure(batch)
        for k in self._state_inputs:
            if inputs[k] is not None:
                self._set_state(self.inputs[k]["state"], inputs[k])
        if steps == 1 and self._streams and self.backend == "c":
            return self._compiled_step(sequences)
        values = self._whole(sequences, steps, batch, lengths)
        return [values[spec["name"]] if "state" not in spec else self._get_state(spec["state"])
                for spec in self.outputs]

    def stream(self, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        """Each step of the sequences on its own, one after the other, state carried (what the C runtime
        does): the outputs of every step stacked, as :meth:`run` returns them."""
        if self.program["mode"] != "stream":
            raise ValueError("this program has a bidirectional layer or packed sequences: it runs whole "
                             "sequences only")
        steps = next(a for a, spec in zip(inputs, self.inputs, strict=True) if "state" not in spec).shape[0]
        rows = []
        for t in range(steps):
            rows.append(self.run([(a if t == 0 else None) if "state" in spec else a[t:t + 1]
                                  for a, spec in zip(inputs, self.inputs, strict=True)]))
        return [row[-1] if "state" in spec else np.concatenate(row)
                for spec, row in zip(self.outputs, zip(*rows, strict=True), strict=True)]

    def _compiled_step(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        """One step as one compiled call (the program built once per batch size): the outputs."""
        if self._step is None:
            self._step = self._build_step(self._batch)
        program, inputs, outputs = self._step
        for buffer, array in zip(inputs, sequences, strict=True):
            buffer[...] = array.reshape(buffer.shape)
        program()
        return [buffer[None].copy() if "state" not in spec else buffer.copy()
                for buffer, spec in zip(outputs, self.outputs, strict=True)]

    def _build_step(self, batch: int):
        buffers = {}
        sequence_inputs = [spec for spec in self.inputs if "state" not in spec]
        for spec in sequence_inputs:
            ids = spec["dtype"].startswith("int")
            buffers[spec["name"]] = np.zeros(batch if ids else (self.sizes[spec["name"]], batch),
                                             np.int32 if ids else np.float32)
        for name, size in self.sizes.items():
            buffers.setdefault(name, np.zeros((size, batch), np.float32))
        operations = []
        for op, prepared, state in zip(self.ops, self._prepared, self._state, strict=True):
            operations += _step_operations(op, prepared, state, buffers)
        program = kernels.Program(operations, threads=self.threads, backend_name=self.backend)
        outputs = [buffers[spec["name"]] for spec in self.outputs]  # states copied there by the program
        return program, [buffers[spec["name"]] for spec in sequence_inputs], outputs

    def _whole(self, sequences: list[np.ndarray], steps: int, batch: int, lengths: dict[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
        """Every op over all steps at once: values (features, T * n), columns in time order; a recurrent
        op with lengths runs each column over its own (:func:`_by_length`)."""
        values = {}
        for array, spec in zip(sequences, [self.inputs[k] for k in self._sequence_inputs], strict=True):
            if spec["dtype"].startswith("int"):
                values[spec["name"]] = array.reshape(-1).astype(np.int32)
            else:  # (T, F, n) -> (F, T * n)
                features = kernels.contiguous(array.astype(np.float32, copy=False).transpose(1, 0, 2))
                values[spec["name"]] = features.reshape(array.shape[1], -1)
        for op, prepared, state in zip(self.ops, self._prepared, self._state, strict=True):
            if op["op"] == "rnn":
                x = np.ascontiguousarray(values[op["x"]].reshape(-1, steps, batch))
                out = (_by_length(prepared, x, state, lengths[op["lengths"]]) if op.get("lengths") else
                       prepared(x, state))
                values[op["y"]] = out.reshape(out.shape[0], -1)
                continue
            if op["y"] not in values:
                values[op["y"]] = np.zeros((self.sizes[op["y"]], steps * batch), np.float32)
            kernels.Program(_step_operations(op, prepared, state, values), threads=self.threads,
                            backend_name=self.backend)()
        return {spec["name"]: values[spec["name"]].reshape(-1, steps, batch).transpose(1, 0, 2)
                for spec in self.outputs if "state" not in spec}


def _by_length(stack: RecurrentStack, x: np.ndarray, state, lengths: np.ndarray) -> np.ndarray:
    """``stack`` over ``x`` (features, T, n) where column ``b`` is ``lengths[b]`` steps long (a packed
    sequence): each group of columns of one length runs its steps (a backward direction from its own
    last step), zeros after them, and the state left is each column's after its last step."""
    steps, batch = x.shape[1:]
    out = np.zeros((stack.output_size * len(stack.layers[0]), steps, batch), np.float32)
    for length in np.unique(lengths):
        columns = np.flatnonzero(lengths == length)
        part = [[tuple(None if a is None else np.ascontiguousarray(a[:, columns]) for a in pair)
                 for pair in layer] for layer in state]
        out[:, :length, columns] = stack(np.ascontiguousarray(x[:, :length, columns]), part)
        for pairs, part_pairs in zip(state, part, strict=True):
            for pair, part_pair in zip(pairs, part_pairs, strict=True):
                for whole, piece in zip(pair, part_pair, strict=True):
                    if whole is not None:
                        whole[:, columns] = piece
    return out


def _step_operations(op: dict, prepared, state, buffers: dict) -> list[tuple]:
    """A program op as :class:`~sparsernn.kernels.Program` operations on ``buffers`` (name -> array)."""
    kind = op["op"]
    x = buffers.get(op.get("x"))
    y = buffers.get(op.get("y"))
    if kind == "embedding":
        return [("gather", prepared, x, y)]
    if kind == "linear":
        matrix, bias = prepared
        return [("product", matrix, x, y, bias)]
    if kind == "rnn":
        operations, _ = prepared.step_operations(x, state, out=y)
        for part, name in enumerate((op.get("hn"), op.get("cn"))):  # the final state, where it is returned
            if name is not None:
                pieces = [pair[part] for layer in state for pair in layer]
                operations += [("copy", piece, buffers[name], 1, len(piece), 0, 0, 0, k * len(piece))
                               for k, piece in enumerate(pieces)]
        return operations
    if kind == "layer_norm":
        weight, bias = prepared
        return [("layer_norm", x, y, weight, bias, op["size"], op["eps"])]
    if kind in kernels.UNARY:
        return [(kind, x, y)]
    if kind in ("softmax", "log_softmax"):
        return [(kind, x, y, op["size"])]
    if kind in kernels.BINARY:
        other = prepared if prepared is not None else buffers[op["other"]]
        return [(kind, x, other, y)]
    return [("copy", x, y, op["outer"], op["length"], op["x_stride"], op["x_offset"], op["y_stride"],
             op["y_offset"])]


# -- the drop-in module ----------------------------------------------------------------------------

@functools.cache
def _input_plan(axes: tuple) -> tuple[list[int], bool, bool]:
    """The transposition that takes an input with these axes (``"T"``, ``"B"``, feature sizes) to the
    program's layout ``(T, features, n)`` (``(features, n)`` without time), and whether it has time and
    batch axes."""
    if "TB" in axes or "BT" in axes:
        raise ValueError("an input with time and batch merged in one axis is not supported")
    order = [axes.index("T")] if "T" in axes else []
    order += [k for k, axis in enumerate(axes) if isinstance(axis, int)]
    order += [axes.index("B")] if "B" in axes else []
    return order, "T" in axes, "B" in axes


@functools.cache
def _output_plan(axes: tuple, steps: int, batch: int) -> tuple[tuple, list[int], tuple]:
    """The reshape, transposition and final shape that take an output in the program's layout, ``(T,
    features, n)`` (a state: ``(features, n)``, ``steps`` 1), back to the forward's ``axes``, time and batch
    merged where it merged them."""
    features = [axis for axis in axes if isinstance(axis, int)]
    logical = ["T", *range(len(features)), "B"]
    wanted, feature = [], iter(range(len(features)))
    for axis in axes:
        wanted += (["T", "B"] if axis == "TB" else ["B", "T"] if axis == "BT" else
                   [axis] if axis in ("T", "B") else [next(feature)])
    order = [logical.index(axis) for axis in wanted]
    order += [k for k, axis in enumerate(logical) if axis not in wanted]  # T of a state, B when unbatched
    shape = tuple(size for axis in axes for size in ([steps * batch] if axis in ("TB", "BT") else [steps]
                                                     if axis == "T" else [batch] if axis == "B" else [axis]))
    return (steps, *features, batch), order, shape


class SparseProgram(nn.Module):
    """A model's forward as one program on the sparse kernels: the same call signature and outputs as the
    model's forward, for inference. In mode ``"stream"`` the recurrent state carries from one call to the
    next (call with one step at a time to stream; :meth:`reset` starts a new sequence) unless the forward
    takes the state as an argument, which then sets it, as in PyTorch."""

    def __init__(self, engine: ProgramEngine):
        super().__init__()
        self.engine = engine
        self.in_spec = pytree.treespec_loads(engine.program["in_spec"])
        self.out_spec = pytree.treespec_loads(engine.program["out_spec"])
        # a forward of plain tensor arguments needs no flattening
        self._build = _builder(self.out_spec)
        self._flat_inputs = self.in_spec == pytree.tree_structure(tuple(range(len(engine.inputs))))
        self._plans: dict[tuple, tuple] = {}
        self._last: tuple | None = None  # (key, plan) of the last streamed step run in one call

    def reset(self) -> None:
        self.engine.reset()

    def extra_repr(self) -> str:
        ops = [op["op"] for op in self.engine.ops]
        return f"mode={self.engine.program['mode']}, ops={len(ops)} ({', '.join(dict.fromkeys(ops))})"

    def forward(self, *args):
        if self._last is not None:  # the same inputs as the last streamed step: straight to its call
            key, plan = self._last
            if plan.step is self.engine._step and _same_inputs(args, key):
                return self._direct(plan, args)
        leaves = list(args) if self._flat_inputs else pytree.tree_leaves(args)
        if len(leaves) != len(self.engine.inputs) or (not self._flat_inputs and
                                                      pytree.tree_structure(args) != self.in_spec):
            raise TypeError(f"the program was lowered for inputs shaped {self.in_spec}, got "
                            f"{pytree.tree_structure(args)}")
        for leaf, entry in zip(leaves, self.engine.inputs, strict=True):
            if not isinstance(leaf, torch.Tensor):
                raise TypeError(f"input {entry['name']} must be a tensor")
            if leaf.requires_grad and torch.is_grad_enabled():
                raise RuntimeError("sparsified programs run inference only; call under torch.no_grad() or "
                                   "torch.inference_mode()")
        key = tuple((leaf.shape, leaf.dtype) for leaf in leaves)
        plan = self._plans.get(key)
        if plan is None or (plan.step is not None and plan.step is not self.engine._step):  # new, or stale
            plan = self._plans[key] = self._plan(key)
        if plan.direct is not None:  # a streamed step of one column: in, run and out in one call
            self._last = (key, plan) if self._flat_inputs else None
            return self._direct(plan, [leaf.contiguous() for leaf in leaves])
        if plan.step is not None:  # a streamed step: the inputs into views of its buffers, one call
            for view, leaf, (order, shape), entry in zip(plan.views_in, leaves, plan.inputs,
                                                         self.engine.inputs, strict=True):
                if view is not None:
                    view.copy_(leaf)
                else:  # a state the forward takes
                    state = np.transpose(leaf.cpu().numpy(), order).reshape(shape)
                    self.engine._set_state(entry["state"], state)
            plan.step[0]()
            return self._build([view.clone(memory_format=torch.contiguous_format) for view in plan.views_out])
        arrays = [leaf.detach().cpu().numpy() for leaf in leaves]
        outputs = self.engine.run([np.transpose(array, order).reshape(shape)
                                   for array, (order, shape) in zip(arrays, plan.inputs, strict=True)])
        return self._build([torch.from_numpy(kernels.contiguous(np.transpose(out.reshape(full), order))
                                             .reshape(shape))
                            for out, (full, order, shape) in zip(outputs, plan.outputs, strict=True)])

    def _direct(self, plan: _Plan, leaves) -> object:
        """A streamed step of one column as one call of the extension: contiguous inputs in, the compiled
        step, copies of the outputs out in the forward's structure."""
        arrays = plan.call([(leaf.numpy(), buffer) for leaf, buffer in zip(leaves, plan.direct, strict=True)])
        return self._build([torch.from_numpy(array) for array in arrays])

    def _plan(self, key: tuple) -> _Plan:
        """For inputs of these shapes and dtypes, checked against the example's axes: see :class:`_Plan`."""
        inputs, steps, batch = [], None, None
        for (shape, _), entry in zip(key, self.engine.inputs, strict=True):
            axes = entry["axes"]
            if len(shape) != len(axes) or any(isinstance(a, int) and a != n
                                              for a, n in zip(axes, shape, strict=True)):
                raise ValueError(f"input {entry['name']} of shape {tuple(shape)} does not match the "
                                 f"example's axes {axes}")
            order, timed, batched = _input_plan(tuple(axes))
            sizes = {axis: n for axis, n in zip(axes, shape, strict=True)}
            steps = sizes.get("T", steps)
            batch = sizes.get("B", batch)
            features = math.prod(n for axis, n in zip(axes, shape, strict=True) if isinstance(axis, int))
            inputs.append((order, ((sizes["T"],) if timed else ()) + (features, sizes.get("B", 1))))
        outputs = [_output_plan(tuple(spec["axes"]), 1 if "state" in spec else steps or 1, batch or 1)
                   for spec in self.engine.outputs]
        plan = _Plan(inputs, outputs)
        if steps == 1:
            self._step_views(plan, batch or 1, [dtype for _, dtype in key])
        return plan

    def _step_views(self, plan: _Plan, batch: int, dtypes: list) -> None:
        """The engine's compiled step for ``batch`` columns (built here) into ``plan``, with torch views of
        its input buffers (None for a state input) and output buffers in the forward's layouts, and at
        batch 1 with inputs of the dtypes the program takes, the buffers the extension's step() copies
        into; nothing where a step is not one compiled call or a layout is not a view."""
        engine = self.engine
        if not engine._streams or engine.backend != "c":
            return
        engine._ensure(batch)
        if engine._step is None:
            engine._step = engine._build_step(batch)
        _, buffers, results = engine._step

        def view(buffer: np.ndarray, axes: list) -> torch.Tensor:
            full, order, shape = _output_plan(tuple(axes), 1, batch)
            return torch.from_numpy(buffer).reshape(full).permute(order).view(shape)

        try:
            sequence = iter(buffers)
            plan.views_in = [None if "state" in entry else view(next(sequence), entry["axes"])
                             for entry in engine.inputs]
            plan.views_out = [view(buffer, spec["axes"])
                              for buffer, spec in zip(results, engine.outputs, strict=True)]
        except RuntimeError:  # a layout that is not a view of the buffer
            return
        plan.step = engine._step
        # one column: every buffer holds its value in the forward's own order
        taken = [getattr(torch, entry["dtype"]) for entry in engine.inputs]
        if batch == 1 and not engine._state_inputs and dtypes == taken:
            plan.direct = buffers
            outputs = [buffer.reshape(shape) for buffer, (_, _, shape)
                       in zip(results, plan.outputs, strict=True)]
            step, program = kernels._compiled().step, engine._step[0]._program
            plan.call = lambda sources: step(program, sources, outputs)


@dataclasses.dataclass
class _Plan:
    """How a call with inputs of given shapes and dtypes runs. ``inputs``: per input the transposition and
    shape that take it to the program's layout; ``outputs``: per output the reshape, transposition and
    shape that take it back. For a streamed step (one time step, mode stream, compiled): ``step``, the
    engine's compiled step (program, input buffers, output buffers); ``views_in`` and ``views_out``,
    torch views of those buffers in the forward's layouts; ``direct``, at batch 1, the input buffers that
    the extension's ``step()`` copies the inputs into, and ``call``, that step bound to the program and
    to the output buffers in the forward's shapes: (source, buffer) pairs in, copies of the outputs out."""

    inputs: list
    outputs: list
    step: tuple | None = None
    views_in: list | None = None
    views_out: list | None = None
    direct: list | None = None
    call: Callable | None = None


def _same_inputs(args: tuple, key: tuple) -> bool:
    """Whether ``args`` are contiguous tensors of ``key``'s shapes and dtypes that need no gradient."""
    if len(args) != len(key):
        return False
    for arg, (shape, dtype) in zip(args, key, strict=True):  # a loop, not all(): on every streamed step
        if (type(arg) is not torch.Tensor or arg.shape != shape or arg.dtype != dtype or arg.requires_grad
                or not arg.is_contiguous()):
            return False
    return True


def _builder(spec: pytree.TreeSpec, start: int = 0):
    """A function from the flat outputs to the forward's structure (its part from leaf ``start`` on):
    ``pytree.tree_unflatten`` compiled once into closures that index the leaves, for tuples and lists
    (pytree's own walks the spec on every call, about 10 us a streamed token), pytree's own for other
    containers."""
    if spec.is_leaf():
        return lambda leaves: leaves[start]
    if spec.type not in (tuple, list):
        end = start + spec.num_leaves
        return lambda leaves: pytree.tree_unflatten(list(leaves[start:end]), spec)
    parts = []
    for k in range(spec.num_children):
        parts.append(_builder(spec.child(k), start))
        start += spec.child(k).num_leaves
    if spec.type is list:
        return lambda leaves: [build(leaves) for build in parts]
    return lambda leaves: tuple([build(leaves) for build in parts])
