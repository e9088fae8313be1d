"""A model's whole forward as one program: captured with ``torch.export``, lowered to the ops of
:mod:`sparsernn.engine.program`.

Why ``torch.export`` rather than ``torch.fx`` symbolic tracing: export runs the forward on fake tensors
and records ATen operations with every tensor's shape, and it keeps ``nn.LSTM``/``nn.GRU``/``nn.RNN``
as one node (``aten.lstm.input`` etc.) with the weights as arguments, whatever the user's ``forward``
does around them (tuples of states, ``view(-1, n)``, ``flatten_parameters``); fx tracing cannot follow
shape-dependent Python in a forward and gives no shapes.

Every program tensor is a sequence of steps: per step and batch column a vector of features. Export runs
at the example's shape only (marking time dynamic fails: the recurrent layers' state initialisation
specializes it), so the lowering exports three times, at the example's length ``T`` and batch ``B``, at
``T + 1`` and at ``B + 1``, and labels each axis of each tensor by the sizes that change: ``"T"``,
``"B"``, a merged ``"TB"``/``"BT"`` (``view(-1, n)``), or a feature size. Operations then act on the
feature axes only, one step at a time, which is what streaming needs.

Packed sequences (``pack_padded_sequence`` -> recurrent layer -> ``pad_packed_sequence``) cannot be
exported as they are: a packed batch's shape depends on the lengths' values. While exporting, the
lowering keeps the batch padded instead (:func:`_packing_kept_padded`) and marks each recurrent layer's
input with the lengths it was packed with (the ``sparsernn::packed`` op); the program's recurrent op
then runs each batch column over its own length and pads with zeros, as PyTorch does. The sorting by
length that packing does (and undoes) reorders the batch only, which a program, whose batch columns are
independent, need not do: it is followed through the graph and must be undone by every output.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import operator
import warnings

import torch
import torch.utils._pytree as pytree
from torch import nn

from sparsernn.errors import UserError

aten = torch.ops.aten


class LoweringError(UserError):
    """A forward the lowering cannot turn into a program (an unknown op, an unsupported shape)."""


_RECURRENT = {aten.lstm.input: "lstm", aten.gru.input: "gru", aten.rnn_tanh.input: "rnn_tanh",
              aten.rnn_relu.input: "rnn_relu"}
#: Operations that change nothing at inference (views checked to keep the features' order).
_ALIASES = {aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default,
            aten.clone.default, aten.contiguous.default, aten.detach.default, aten.alias.default,
            aten.lift_fresh_copy.default}
_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
          aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
          aten.permute.default, aten.transpose.int, aten.t.default, aten.unflatten.int}
_UNARY = {aten.tanh.default: "tanh", aten.relu.default: "relu", aten.sigmoid.default: "sigmoid"}
_SOFTMAX = {aten.softmax.int: "softmax", aten._softmax.default: "softmax",
            aten.log_softmax.int: "log_softmax", aten._log_softmax.default: "log_softmax"}
_BINARY = {aten.add.Tensor: "add", aten.mul.Tensor: "mul", aten.sub.Tensor: "sub", aten.div.Tensor: "div"}
_ZEROS = {aten.zeros.default, aten.zeros_like.default, aten.new_zeros.default}
_SPLITS = {aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default}
_CASTS = {aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default}
_SORTS = {aten.sort.default, aten.sort.stable}


@torch.library.custom_op("sparsernn::packed", mutates_args=())
def _packed(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """In an exported graph: ``x`` (time, batch, features), the input of a recurrent layer, packed with
    ``lengths`` (one per batch column); the identity otherwise."""
    return x.clone()


@_packed.register_fake
def _(x, lengths):
    return torch.empty_like(x)


class _PackedBatch:
    """A PackedSequence's ``batch_sizes`` while a forward is exported: the data stays padded (time-major,
    flattened as packed data is) and the lengths ride along to the recurrent layer. PyTorch's code
    around packing reads ``[0]`` (the batch), ``size(0)`` (the longest length) and ``device``."""

    device = torch.device("cpu")

    def __init__(self, steps: int, batch: int, lengths: torch.Tensor):
        self.steps, self.batch, self.lengths = steps, batch, lengths

    def __getitem__(self, index):
        return self.batch

    def size(self, dim: int = 0) -> int:
        return self.steps


@contextlib.contextmanager
def _packing_kept_padded():
    """Within: ``pack_padded_sequence`` keeps the batch padded, a recurrent layer given such a batch runs
    on it with its input marked by :func:`_packed`, and ``pad_packed_sequence`` takes it back (PyTorch's
    ``_VF`` functions that they call, replaced; every other call passes through)."""
    from torch import _VF

    def pack(x, lengths, batch_first):
        x = x.transpose(0, 1) if batch_first else x
        steps, batch = x.shape[:2]
        return x.reshape(steps * batch, *x.shape[2:]), _PackedBatch(steps, batch, lengths)

    def pad(data, sizes, batch_first, padding_value, total_length):
        if padding_value != 0:
            raise LoweringError(f"pad_packed_sequence(padding_value={padding_value}): a program pads with "
                                "zeros")
        if total_length != sizes.steps:
            raise LoweringError("pad_packed_sequence(total_length=...) is not supported: the program's "
                                "outputs are as long as its inputs")
        out = data.reshape(sizes.steps, sizes.batch, *data.shape[1:])
        return (out.transpose(0, 1) if batch_first else out), sizes.lengths

    def recurrent(original):
        def call(*args):
            if not isinstance(args[1], _PackedBatch):
                return original(*args)
            data, sizes, hx, *rest = args  # the packed overload: no batch_first, time-major
            x = _packed(data.reshape(sizes.steps, sizes.batch, *data.shape[1:]), sizes.lengths)
            output, *states = original(x, hx, *rest, False)
            return (output.reshape(sizes.steps * sizes.batch, *output.shape[2:]), *states)
        return call

    patches = {"_pack_padded_sequence": pack, "_pad_packed_sequence": pad}
    patches |= {name: recurrent(getattr(_VF, name)) for name in ("lstm", "gru", "rnn_tanh", "rnn_relu")}
    for name, function in patches.items():
        setattr(_VF, name, function)
    try:
        yield
    finally:
        for name in patches:
            delattr(_VF, name)


def _module(node: torch.fx.Node) -> str:
    """The module path a node was recorded in, for messages."""
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else ""
    return path or "(the model's own forward)"


def _fail(node: torch.fx.Node, why: str) -> LoweringError:
    return LoweringError(f"{_module(node)}: {node.target}: {why}")


def _shape(node) -> tuple[int, ...] | None:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(int(size) for size in value.shape) if isinstance(value, torch.Tensor) else None


def _export(model: nn.Module, args: tuple) -> torch.export.ExportedProgram:
    with warnings.catch_warnings(), _packing_kept_padded():
        warnings.simplefilter("ignore")  # "tensor attributes ... _flat_weights were assigned during export"
        exported = torch.export.export(model, args)
    exported.graph.eliminate_dead_code()  # e.g. the lengths pad_packed_sequence returns, unused
    return exported


def _recurrent_nodes(program: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    return [node for node in program.graph.nodes if node.op == "call_function" and node.target in _RECURRENT]


def _time_batch(node: torch.fx.Node) -> tuple[int, int]:
    """``(T, B)`` of a recurrent node's input."""
    shape, batch_first = _shape(node.args[0]), node.args[8]
    if shape is None or len(shape) != 3:
        raise _fail(node, "unbatched (2-D) input: give example inputs with a batch dimension")
    return (shape[1], shape[0]) if batch_first else (shape[0], shape[1])


def _resized(args: tuple, axes: list[int | None], size: int) -> tuple:
    """The example arguments with axis ``axes[i]`` of the ``i``-th tensor leaf resized to ``size`` (ids
    and values repeated from the start, so token ids stay valid)."""
    leaves, spec = pytree.tree_flatten(args)
    tensors = iter(axes)
    out = []
    for leaf in leaves:
        axis = next(tensors) if isinstance(leaf, torch.Tensor) else None
        if axis is not None:
            index = torch.arange(size) % leaf.shape[axis]
            leaf = leaf.index_select(axis, index)
        out.append(leaf)
    return pytree.tree_unflatten(out, spec)


def _find_axes(model, args, base, size_of, what: str, fixed: list[int | None] | None = None) -> tuple:
    """The axis of each example tensor that is the time (or batch) axis, found by exporting with that
    axis one longer and checking that the first recurrent layer's time (batch) grew: returns the axes and
    the export at the longer size."""
    leaves = [leaf for leaf in pytree.tree_leaves(args) if isinstance(leaf, torch.Tensor)]
    first = _recurrent_nodes(base)[0]
    size = size_of(first)
    candidates = [[None] + [axis for axis, n in enumerate(leaf.shape) if n == size
                            and (fixed is None or axis != fixed[i])] for i, leaf in enumerate(leaves)]
    # prefer moving as many inputs as possible (a state input moves with the tokens' batch)
    choices = sorted(itertools.product(*candidates), key=lambda axes: sum(a is None for a in axes))
    for axes in choices[:64]:
        if all(axis is None for axis in axes):
            continue
        try:
            exported = _export(model, _resized(args, axes, size + 1))
        except Exception:  # noqa: BLE001, S112 (a wrong guess fails to export; try the next)
            continue
        nodes = _recurrent_nodes(exported)
        if nodes and size_of(nodes[0]) == size + 1:
            return axes, exported
    raise LoweringError(f"could not find the {what} axis of the example inputs: the first recurrent layer's "
                        f"{what} size is {size}; give example inputs whose time length and batch size differ "
                        "from each other and from the feature sizes")


def _labels(base, longer, wider, steps: int, batch: int) -> dict[str, list]:
    """Each tensor node's axes: "T", "B", "TB" (or "BT") or a feature size, from its shape in the three
    exports (nodes matched by name)."""
    shapes = [{node.name: _shape(node) for node in program.graph.nodes} for program in (base, longer, wider)]
    labels = {}
    for node in base.graph.nodes:
        shape = shapes[0][node.name]
        if shape is None:
            continue
        other_t, other_b = shapes[1].get(node.name), shapes[2].get(node.name)
        if other_t is None or other_b is None or len(other_t) != len(shape) or len(other_b) != len(shape):
            raise _fail(node, "the graph changes with the sequence length or the batch size")
        axes = []
        for size, size_t, size_b in zip(shape, other_t, other_b, strict=True):
            if size == size_t == size_b:
                axes.append(size)
            elif (size, size_t, size_b) == (steps, steps + 1, steps):
                axes.append("T")
            elif (size, size_t, size_b) == (batch, batch, batch + 1):
                axes.append("B")
            elif (size, size_t, size_b) == (steps * batch, (steps + 1) * batch, steps * (batch + 1)):
                axes.append("TB")
            else:
                raise _fail(node, f"an axis of size {size} mixes time or batch with features")
        labels[node.name] = axes
    return labels


def _features(axes: list) -> list[int]:
    return [a for a in axes if isinstance(a, int)]


def _size(axes: list) -> int:
    return math.prod(_features(axes))


class _Lowering:
    """Walks the exported graph once, node by node, emitting program ops."""

    def __init__(self, exported: torch.export.ExportedProgram, labels: dict[str, list]):
        self.exported, self.labels = exported, labels
        signature = exported.graph_signature
        self.weights = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
        self.user_inputs = list(signature.user_inputs)
        self.ops: list[dict] = []
        self.values: dict[str, int] = {}
        self.alias: dict[str, str] = {}  # node name -> the value it is a view of
        self.zeros: set[str] = set()
        self.recurrent: dict[str, dict] = {}  # recurrent node name -> its op
        self.state_inputs: dict[str, dict] = {}  # input name -> {"op": index, "part": "h" | "c"}
        self.state_outputs: dict[str, dict] = {}  # getitem name -> the same
        self.packed: dict[str, str] = {}  # a packed input's node name -> the value of its lengths
        self.sorts: dict[str, str] = {}  # a sort's node name -> the value it sorts (lengths)
        self.permutations: dict[str, int] = {}  # an index that reorders the batch: +1 sorts, -1 restores
        self.scratch: set[str] = set()  # tensors an inverse permutation is built in
        self.order: dict[str, int] = {}  # node name -> its batch order: 0 the inputs', 1 sorted

    # -- names -----------------------------------------------------------------------------------
    def value(self, node: torch.fx.Node) -> str:
        """The program value a node's tensor is (through views)."""
        if not isinstance(node, torch.fx.Node):
            raise LoweringError(f"expected a tensor, got {node!r}")
        name = self.alias.get(node.name, node.name)
        if node.name in self.weights:
            raise _fail(node, "a weight used as an activation is not supported")
        if name in self.state_outputs:
            raise _fail(node, "an operation on a recurrent layer's final state is not supported (a program "
                              "runs step by step; return the state instead)")
        if name not in self.values:
            raise _fail(node, "this tensor is not computed by a supported operation")
        return name

    def weight(self, node, owner: torch.fx.Node) -> str | None:
        if node is None:
            return None
        if not isinstance(node, torch.fx.Node) or node.name not in self.weights:
            raise _fail(owner, "expected a parameter or buffer of the model here")
        return self.weights[node.name]

    def define(self, node: torch.fx.Node) -> str:
        """A new value: the node's tensor, its features per step from its axes."""
        self.values[node.name] = _size(self.labels[node.name])
        return node.name

    def axes(self, node: torch.fx.Node) -> list:
        """The node's own axes (a view's, not those of the value it views)."""
        return self.labels[node.name]

    # -- the walk --------------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.exported.graph.nodes:
            if node.op == "placeholder":
                if node.name in self.user_inputs:
                    self.define(node)
                elif node.name not in self.weights:
                    raise _fail(node, "tensor constants created in forward are not supported; register them "
                                      "as buffers")
            elif node.op == "call_function":
                self.lower(node)

    def lower(self, node: torch.fx.Node) -> None:
        """One node; then its batch order, that of its inputs, which must agree."""
        self._lower(node)
        if node.name not in self.order:
            orderless = self.weights.keys() | self.permutations.keys() | self.zeros  # zeros: any order
            orders = {self.order.get(source.name, 0) for source in node.all_input_nodes
                      if source.name not in orderless}
            if len(orders) > 1:
                raise _fail(node, "combines batch columns in different orders (a batch sorted by length, as "
                                  "pack_padded_sequence does, and not restored)")
            self.order[node.name] = orders.pop() if orders else 0

    def _lower(self, node: torch.fx.Node) -> None:  # noqa: C901 (one branch per supported operation)
        target, args = node.target, node.args
        if target == torch.ops.sparsernn.packed.default:
            self.alias[node.name] = self.value(args[0])
            self.packed[node.name] = self.value(args[1])
            return
        if target in _CASTS or target in _SORTS or target in (aten.empty_like.default, aten.arange.start,
                                                              aten.arange.default, aten.scatter_.src,
                                                              aten.scatter.src, aten.index_select.default,
                                                              aten.index.Tensor):
            self._reordering(node)
            return
        if target in _ALIASES or (target in _VIEWS and self._keeps_order(node)):
            self.alias[node.name] = self.value(args[0])
            return
        if target in _VIEWS:
            raise _fail(node, "a view that reorders features or mixes them with time or batch")
        if target == aten._assert_tensor_metadata.default:
            return
        if target in _ZEROS:
            self.zeros.add(node.name)
            return
        if target == aten.embedding.default:
            ids = args[1]
            if _size(self.axes(ids)) != 1:
                raise _fail(node, "an embedding of several ids per step is not supported")
            self._emit(node, "embedding", x=self.value(ids), weight=self.weight(args[0], node))
        elif target == aten.linear.default:
            x = args[0]
            if not isinstance(self.axes(x)[-1], int) or _size(self.axes(x)) != self.axes(x)[-1]:
                raise _fail(node, "a linear layer over several feature axes is not supported")
            self._emit(node, "linear", x=self.value(x), weight=self.weight(args[1], node),
                       bias=self.weight(args[2] if len(args) > 2 else None, node))
        elif target in _RECURRENT:
            self._recurrent(node)
        elif target == operator.getitem:
            self._getitem(node)
        elif target == aten.layer_norm.default:
            x, shape = args[0], list(args[1])
            axes = self.axes(x)
            if axes[len(axes) - len(shape):] != shape:
                raise _fail(node, "layer_norm over axes other than the last feature axes")
            weight = self.weight(args[2] if len(args) > 2 else None, node)
            bias = self.weight(args[3] if len(args) > 3 else None, node)
            eps = float(args[4]) if len(args) > 4 else 1e-5
            self._emit(node, "layer_norm", x=self.value(x), size=math.prod(shape), weight=weight, bias=bias,
                       eps=eps)
        elif target in _UNARY:
            self._emit(node, _UNARY[target], x=self.value(args[0]))
        elif target in _SOFTMAX:
            x, dim = args[0], args[1]
            axes = self.axes(x)
            dim %= len(axes)
            if not isinstance(axes[dim], int) or any(isinstance(a, int) for a in axes[dim + 1:]):
                raise _fail(node, "softmax over an axis other than the last feature axis")
            self._emit(node, _SOFTMAX[target], x=self.value(x), size=axes[dim])
        elif target in _BINARY:
            self._binary(node)
        elif target == aten.cat.default:
            self._cat(node)
        elif target in (aten.slice.Tensor, aten.select.int, aten.narrow.default):
            self._slice(node)
        elif target in _SPLITS:
            return  # its getitems are slices
        else:
            raise _fail(node, "operation not supported by the program lowering (supported: embedding, "
                              "linear, RNN/GRU/LSTM, layer_norm, tanh/relu/sigmoid, softmax/log_softmax, "
                              "add/mul/sub/div, cat, slice/select/split, views, dropout, packed sequences)")

    def _reordering(self, node: torch.fx.Node) -> None:
        """Casts, and the batch's sorting by length and its restoring (``pack_padded_sequence`` with
        ``enforce_sorted=False``, ``pad_packed_sequence``): aliases, the batch order followed."""
        target, args = node.target, node.args
        source = args[0]
        if target in _CASTS:
            if source.name in self.permutations:
                self.permutations[node.name] = self.permutations[source.name]
                return
            before, after = source.meta["val"].dtype, node.meta["val"].dtype
            if before != after and not (before.is_floating_point is after.is_floating_point is False):
                raise _fail(node, f"a cast from {before} to {after} is not supported")
            self.alias[node.name] = self.value(source)
        elif target in _SORTS:
            if self.axes(source) != ["B"]:
                raise _fail(node, "sorting is supported for the batch's lengths only (pack_padded_sequence)")
            self.sorts[node.name] = self.value(source)
        elif target in (aten.empty_like.default, aten.arange.start, aten.arange.default):
            self.scratch.add(node.name)  # where the inverse permutation is built; nothing else may read it
        elif target in (aten.scatter_.src, aten.scatter.src):
            empty, dim, index, counts = args[:4]
            if empty.name not in self.scratch or counts.name not in self.scratch or \
                    index.name not in self.permutations or dim != 0:
                raise _fail(node, "scatter is supported as invert_permutation only (pack_padded_sequence)")
            self.permutations[node.name] = -self.permutations[index.name]
        else:  # index_select(x, dim, index), x[index]
            dim, index = (args[1], args[2]) if target == aten.index_select.default else (0, args[1])
            if target == aten.index.Tensor:
                if len(index) != 1 or index[0] is None:
                    raise _fail(node, "indexing is supported along the batch only")
                index = index[0]
            axes = self.axes(source)
            if not isinstance(index, torch.fx.Node) or index.name not in self.permutations or \
                    axes[dim % len(axes)] != "B":
                raise _fail(node, "selecting along an axis is supported for reordering the batch only, as "
                                  "pack_padded_sequence and pad_packed_sequence do")
            state = self.alias.get(source.name, source.name)  # a final state, put back in the batch's order
            self.alias[node.name] = state if state in self.state_outputs else self.value(source)
            self.order[node.name] = self.order.get(source.name, 0) + self.permutations[index.name]

    def _emit(self, node: torch.fx.Node, op: str, **fields) -> None:
        self.ops.append({"op": op, "module": _module(node), **fields, "y": self.define(node)})

    def _keeps_order(self, node: torch.fx.Node) -> bool:
        """A view keeps the program's layout when its features are the input's in the same order."""
        source = node.args[0]
        before, after = self.axes(source), self.labels.get(node.name)
        if after is None:
            return False
        if _size(before) != _size(after):
            return False
        if node.target in (aten.permute.default, aten.transpose.int, aten.t.default):
            order = list(node.args[1]) if node.target == aten.permute.default else None
            if order is None:
                rank = len(before)
                a, b = ((node.args[1] % rank, node.args[2] % rank) if node.target == aten.transpose.int
                        else (0, 1))
                order = list(range(rank))
                order[a], order[b] = order[b], order[a]
            moved = [axis for axis in order if isinstance(before[axis], int) and before[axis] != 1]
            return moved == sorted(moved)
        return True

    def _recurrent(self, node: torch.fx.Node) -> None:
        cell = _RECURRENT[node.target]
        x, hx, params, has_biases, layers, _dropout, _train, bidirectional, batch_first = node.args[:9]
        axes = self.axes(x)
        if axes[:2] != (["B", "T"] if batch_first else ["T", "B"]) or len(axes) != 3:
            raise _fail(node, f"input axes {axes} are not (time, batch, features) in the layer's order")
        names = [self.weight(p, node) for p in params]
        state = self.exported.state_dict
        directions = 2 if bidirectional else 1
        per = len(names) // (layers * directions)
        weights = []
        for k in range(layers * directions):
            own = names[k * per:(k + 1) * per]
            entry = {"weight_ih": own[0], "weight_hh": own[1]}
            rest = own[2:]
            if has_biases:
                entry["bias_ih"], entry["bias_hh"], rest = rest[0], rest[1], rest[2:]
            if rest:
                entry["weight_hr"] = rest[0]
            weights.append(entry)
        gates, outputs = state[names[1]].shape  # W_hh: (gates * hidden_size, hidden_size or proj_size)
        hidden_size = gates // {"lstm": 4, "gru": 3}.get(cell, 1)
        op = {"op": "rnn", "module": _module(node), "cell": cell, "x": self.value(x), "layers": layers,
              "bidirectional": bool(bidirectional), "hidden_size": int(hidden_size),
              "proj_size": int(outputs) if "weight_hr" in weights[0] else 0, "weights": weights,
              "h0": None, "c0": None, "hn": None, "cn": None, "y": None}
        if x.name in self.packed:  # run each batch column over its own length
            op["lengths"] = self.packed[x.name]
        states = list(hx) if isinstance(hx, (list, tuple)) else [hx]
        for part, state in zip(("h0", "c0"), states, strict=False):
            if state.name in self.zeros:
                continue
            if state.name not in self.user_inputs:
                raise _fail(node, "an initial state that is neither zeros nor an input of the forward")
            op[part] = state.name
            self.state_inputs[state.name] = {"op": len(self.ops), "part": part[0]}
        self.recurrent[node.name] = op
        self.ops.append(op)

    def _getitem(self, node: torch.fx.Node) -> None:
        source, index = node.args
        if source.name in self.sorts:  # (sorted values, the permutation that sorts)
            if index == 0:
                self.alias[node.name] = self.sorts[source.name]
                self.order[node.name] = self.order.get(source.args[0].name, 0) + 1
            else:
                self.permutations[node.name] = 1
            return
        if source.name in self.recurrent:
            op = self.recurrent[source.name]
            if index == 0:
                op["y"] = self.define(node)
            elif node.users:  # a final state the forward uses or returns (else nothing copies it each step)
                part = "hn" if index == 1 else "cn"
                op[part] = self.define(node)
                self.state_outputs[node.name] = {"op": self.ops.index(op), "part": part[0]}
            return
        if source.target in _SPLITS:
            x, dim = source.args[0], source.args[2] if len(source.args) > 2 else 0
            dim %= len(_shape(x))
            pieces = [tuple(part.shape) for part in source.meta["val"]]
            start = sum(piece[dim] for piece in pieces[:index])
            self._copy_slice(node, x, dim, start, start + pieces[index][dim])
            return
        raise _fail(node, "indexing this result is not supported")

    def _binary(self, node: torch.fx.Node) -> None:
        a, b = node.args[:2]
        if node.kwargs.get("alpha", 1) != 1:
            raise _fail(node, "add/sub with alpha is not supported")
        name = _BINARY[node.target]
        if isinstance(b, (int, float)):
            self._emit(node, name, x=self.value(a), scalar=float(b))
            return
        if isinstance(a, (int, float)):
            raise _fail(node, "a number on the left of an arithmetic operation is not supported")
        if b.name in self.weights:
            shape = list(self.exported.state_dict[self.weights[b.name]].shape)
            features = _features(self.axes(a))
            while shape and shape[0] == 1:
                shape = shape[1:]
            if shape != features[len(features) - len(shape):] or math.prod(shape) != _size(self.axes(a)):
                raise _fail(node, "a parameter that does not match all the features it is combined with")
            self._emit(node, name, x=self.value(a), weight=self.weights[b.name])
            return
        if self.axes(a) != self.axes(b):
            raise _fail(node, f"broadcasting {self.axes(a)} with {self.axes(b)} is not supported")
        self._emit(node, name, x=self.value(a), other=self.value(b))

    def _cat(self, node: torch.fx.Node) -> None:
        parts, dim = node.args[0], node.args[1] if len(node.args) > 1 else 0
        axes = self.labels[node.name]
        dim %= len(axes)
        if not isinstance(axes[dim], int):
            raise _fail(node, "concatenating along time or batch is not supported")
        outer = math.prod(_features(axes[:dim]))
        inner = math.prod(_features(axes[dim + 1:]))
        y = self.define(node)
        offset = 0
        for part in parts:
            length = _shape(part)[dim] * inner
            self.ops.append({"op": "copy", "module": _module(node), "x": self.value(part), "y": y,
                             "outer": outer, "length": length, "x_stride": length, "x_offset": 0,
                             "y_stride": axes[dim] * inner, "y_offset": offset})
            offset += length

    def _slice(self, node: torch.fx.Node) -> None:
        x, dim = node.args[0], node.args[1]
        size = _shape(x)[dim % len(_shape(x))]
        if node.target == aten.select.int:
            start = node.args[2] % size
            end = start + 1
        elif node.target == aten.narrow.default:
            start, end = node.args[2] % size, node.args[2] % size + node.args[3]
        else:
            start = node.args[2] if len(node.args) > 2 and node.args[2] is not None else 0
            end = node.args[3] if len(node.args) > 3 and node.args[3] is not None else size
            if (node.args[4] if len(node.args) > 4 else 1) != 1:
                raise _fail(node, "a slice with a step is not supported")
            start = max(0, start + size if start < 0 else start)
            end = min(size, end + size if end < 0 else end)
        self._copy_slice(node, x, dim, start, end)

    def _copy_slice(self, node, x, dim: int, start: int, end: int) -> None:
        axes = self.axes(x)
        dim %= len(axes)
        if not isinstance(axes[dim], int):
            raise _fail(node, "slicing along time or batch is not supported (a program runs step by step)")
        outer = math.prod(_features(axes[:dim]))
        inner = math.prod(_features(axes[dim + 1:]))
        length = (end - start) * inner
        self.ops.append({"op": "copy", "module": _module(node), "x": self.value(x), "outer": outer,
                         "length": length, "x_stride": axes[dim] * inner, "x_offset": start * inner,
                         "y_stride": length, "y_offset": 0, "y": self.define(node)})


def lower(model: nn.Module, example_inputs: tuple) -> dict:
    """The program (see :mod:`sparsernn.engine.program` and docs/FORMAT.md) that computes ``model``'s
    forward on inputs shaped like ``example_inputs`` (a whole sequence: the forward's positional
    arguments), step by step; the model is exported in eval mode and left in the mode it had. Raises
    :class:`LoweringError` naming the operation and the module it cannot lower."""
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    was_training = model.training
    try:
        return _lower(model.eval(), example_inputs)
    finally:
        model.train(was_training)


def _lower(model: nn.Module, example_inputs: tuple) -> dict:
    try:
        base = _export(model, example_inputs)
    except Exception as error:  # noqa: BLE001 (export raises many kinds; its message is what helps)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise LoweringError(f"torch.export could not capture the forward: {type(error).__name__}: {first}"
                            ) from error
    recurrent = _recurrent_nodes(base)
    if not recurrent:
        raise LoweringError("the forward has no nn.RNN/nn.GRU/nn.LSTM layer: a program runs a recurrent "
                            "model step by step")
    steps, batch = _time_batch(recurrent[0])
    if steps == batch:
        raise LoweringError(f"the example inputs' time length and batch size are both {steps}: give "
                            "different sizes so the two can be told apart")
    time_axes, longer = _find_axes(model, example_inputs, base, lambda n: _time_batch(n)[0], "time")
    _, wider = _find_axes(model, example_inputs, base, lambda n: _time_batch(n)[1], "batch",
                          fixed=list(time_axes))
    labels = _labels(base, longer, wider, steps, batch)
    _merged_order(base, labels)
    lowering = _Lowering(base, labels)
    lowering.run()
    leaves = pytree.tree_leaves(example_inputs)
    signature = base.graph_signature
    if len(leaves) != len(signature.user_inputs):
        raise LoweringError("the example inputs must be tensors only (no other arguments)")
    lengths = {op["lengths"] for op in lowering.ops if op.get("lengths")}
    if lengths - set(signature.user_inputs):
        raise LoweringError("the lengths given to pack_padded_sequence must be an input of the forward (a "
                            "tensor of one length per batch column)")
    inputs = []
    for name, leaf in zip(signature.user_inputs, leaves, strict=True):
        entry = {"name": name, "dtype": str(leaf.dtype).removeprefix("torch."), "axes": labels[name]}
        if name in lowering.state_inputs:
            entry["state"] = lowering.state_inputs[name]
        elif name in lengths:
            if leaf.dtype not in (torch.int64, torch.int32) or labels[name] != ["B"]:
                raise LoweringError(f"input {name}: the lengths of pack_padded_sequence must be int64 or "
                                    "int32, one per batch column")
            entry["lengths"] = True
        elif leaf.dtype not in (torch.int64, torch.int32, torch.float32):
            raise LoweringError(f"input {name}: dtype {leaf.dtype} (token ids int64/int32 or features "
                                "float32)")
        inputs.append(entry)
    outputs = []
    for name in signature.user_outputs:
        node = next(node for node in base.graph.nodes if node.name == name)
        value = lowering.alias.get(name, name)
        if value not in lowering.values or value in lowering.state_inputs:
            raise _fail(node, "an output that is not computed by the program")
        if lowering.order.get(name, 0):
            raise _fail(node, "an output whose batch is in another order than the inputs' (sorted by length "
                              "and not restored)")
        entry = {"name": value, "axes": labels[name]}
        if value in lowering.state_outputs:
            entry["state"] = lowering.state_outputs[value]
        outputs.append(entry)
    if not outputs or "state" in outputs[0]:
        raise LoweringError("the forward's first output must be a computed tensor (not a state)")
    bidirectional = any(op["op"] == "rnn" and op["bidirectional"] for op in lowering.ops)
    in_spec = pytree.tree_flatten(example_inputs)[1]
    # version 2: lengths (packed sequences); a program without them stays readable by version 1 readers
    return {"version": 2 if lengths else 1, "mode": "whole" if bidirectional or lengths else "stream",
            "inputs": inputs,
            "outputs": outputs, "values": lowering.values, "ops": lowering.ops,
            "in_spec": pytree.treespec_dumps(in_spec),
            "out_spec": pytree.treespec_dumps(base.call_spec.out_spec)}


def _merged_order(exported, labels: dict[str, list]) -> None:
    """A merged time-and-batch axis is "TB" when the tensor it came from (through views) had time before
    batch, else "BT"."""
    for node in exported.graph.nodes:
        axes = labels.get(node.name)
        if not axes or "TB" not in axes:
            continue
        sources = [labels.get(arg.name) for arg in node.all_input_nodes if labels.get(arg.name)]
        order = None
        for source in sources:
            if "BT" in source or "TB" in source:
                order = "BT" if "BT" in source else "TB"
                break
            if "T" in source and "B" in source:
                order = "TB" if source.index("T") < source.index("B") else "BT"
                break
        labels[node.name] = [(order or "TB") if a == "TB" else a for a in axes]
