"""The program in a format 3 or 4 file (docs/FORMAT.md, "Program"): its checks on load.

:func:`check_program` recomputes every value's size from the ops and the tensors' shapes, so that a
program that loads runs without reading outside a buffer or a tensor: the same checks the C reader
makes (``runtime/src/program.c``).
"""

from __future__ import annotations

import math

#: Gates per cell, PyTorch's order (LSTM i|f|g|o, GRU r|z|n).
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}
ELEMENTWISE = ("tanh", "relu", "sigmoid")
SOFTMAX = ("softmax", "log_softmax")
ARITHMETIC = ("add", "mul", "sub", "div")
OPS = ("embedding", "linear", "rnn", "layer_norm", *ELEMENTWISE, *SOFTMAX, *ARITHMETIC, "copy")
AXES = ("T", "B", "TB", "BT")


class ProgramError(ValueError):
    """A program that does not fit its tensors or itself."""


def _integer(value, what: str, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ProgramError(f"{what} must be an integer >= {low}, got {value!r}")
    return value


def check_program(program: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise :class:`ProgramError` unless ``program`` is well formed against tensors of ``shapes`` (by
    name, ties resolved): every name defined before use, every size consistent."""
    if not isinstance(program, dict) or program.get("version") not in (1, 2):
        version = program.get("version") if isinstance(program, dict) else None
        raise ProgramError(f"program version {version!r}; this sparsernn reads 1 and 2")
    if program.get("mode") not in ("stream", "whole"):
        raise ProgramError(f"mode must be stream or whole, got {program.get('mode')!r}")
    sizes = program.get("values")
    if not isinstance(sizes, dict):
        raise ProgramError("values must map value names to feature counts")
    for name, size in sizes.items():
        _integer(size, f"values[{name!r}]", 1)
    defined = set()
    inputs = program.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProgramError("inputs must be a non-empty list")
    for entry in inputs:
        name = entry.get("name")
        _check_axes(entry, sizes)
        if entry.get("dtype") not in ("int64", "int32", "float32"):
            raise ProgramError(f"input {name}: dtype must be int64, int32 or float32")
        if "lengths" in entry and (entry["lengths"] is not True or program["version"] < 2 or
                                   entry["dtype"] == "float32" or entry["axes"] != ["B"] or "state" in entry):
            raise ProgramError(f"input {name}: lengths (program version 2) are true, integers, axes [\"B\"]")
        defined.add(name)
    if all("state" in entry or "lengths" in entry for entry in inputs):
        raise ProgramError("the program needs a sequence input (not a state, not lengths)")
    lengths = {entry["name"] for entry in inputs if "lengths" in entry}
    ids = {entry["name"] for entry in inputs if entry["dtype"] != "float32"} - lengths
    recurrent = set()
    for index, op in enumerate(program.get("ops") or []):
        where = f"op {index} ({op.get('op')!r}, module {op.get('module')!r})"
        try:
            if not isinstance(op, dict):
                raise ProgramError("an op must be an object")
            if (op.get("op") == "embedding") != (op.get("x") in ids) or op.get("other") in ids:
                raise ProgramError("token ids (integer inputs) are read by embedding ops only, and embedding "
                                   "ops read token ids only")
            if {op.get(key) for key in ("x", "other", "h0", "c0")} & lengths or \
                    (op.get("lengths") is not None and (op["op"] != "rnn" or op["lengths"] not in lengths)):
                raise ProgramError("lengths are read by rnn ops only, as their lengths")
            if op.get("lengths") is not None and program["mode"] != "whole":
                raise ProgramError("an rnn op with lengths needs mode whole")
            _check_op(op, sizes, shapes, defined, program["mode"])
        except ProgramError as error:
            raise ProgramError(f"{where}: {error}") from None
        if op["op"] == "rnn":
            recurrent.add(index)
    for entry in inputs:
        if "state" in entry:
            _check_state(entry, program["ops"], recurrent, "h0", "c0")
    outputs = program.get("outputs")
    if not isinstance(outputs, list) or not outputs or "state" in outputs[0]:
        raise ProgramError("outputs must be a non-empty list whose first entry is not a state")
    for entry in outputs:
        if entry.get("name") not in defined:
            raise ProgramError(f"output {entry.get('name')!r} is not computed")
        _check_axes(entry, sizes)
        if "state" in entry:
            _check_state(entry, program["ops"], recurrent, "hn", "cn")


def _check_axes(entry: dict, sizes: dict) -> None:
    axes, name = entry.get("axes"), entry.get("name")
    if name not in sizes:
        raise ProgramError(f"{name!r} has no entry in values")
    if not isinstance(axes, list) or any(not (axis in AXES or (isinstance(axis, int) and axis >= 1))
                                         for axis in axes):
        raise ProgramError(f"{name}: axes must list T, B, TB, BT or feature sizes, got {axes!r}")
    if math.prod(axis for axis in axes if isinstance(axis, int)) != sizes[name]:
        raise ProgramError(f"{name}: axes {axes} do not hold {sizes[name]} features")


def _check_state(entry: dict, ops: list, recurrent: set, *fields: str) -> None:
    state = entry["state"]
    if not isinstance(state, dict) or state.get("op") not in recurrent or state.get("part") not in ("h", "c"):
        raise ProgramError(f"{entry.get('name')}: state must name an rnn op and part h or c")
    field = fields[0] if state["part"] == "h" else fields[1]
    if ops[state["op"]].get(field) != entry["name"]:
        raise ProgramError(f"{entry['name']}: op {state['op']} does not name it as {field}")


def _use(op: dict, key: str, defined: set, sizes: dict) -> int:
    name = op.get(key)
    if name not in defined:
        raise ProgramError(f"{key} {name!r} is not defined before it is used")
    return sizes[name]


def _tensor(op: dict, key: str, shapes: dict, rank: int | None = None) -> tuple[int, ...]:
    name = op.get(key)
    if name not in shapes:
        raise ProgramError(f"{key} {name!r} is not a tensor of the file")
    if rank is not None and len(shapes[name]) != rank:
        raise ProgramError(f"{key} {name!r} has shape {shapes[name]}, expected {rank} dimensions")
    return shapes[name]


def _define(op: dict, key: str, size: int, defined: set, sizes: dict, *, again: bool = False) -> None:
    name = op.get(key)
    if name not in sizes:
        raise ProgramError(f"{key} {name!r} has no entry in values")
    if sizes[name] != size:
        raise ProgramError(f"{key} {name!r} holds {sizes[name]} features, the op computes {size}")
    if name in defined and not again:
        raise ProgramError(f"{key} {name!r} is computed twice")
    defined.add(name)


def _check_op(op: dict, sizes: dict, shapes: dict, defined: set, mode: str) -> None:  # noqa: C901
    kind = op.get("op")
    if kind not in OPS:
        raise ProgramError(f"unknown op; valid: {', '.join(OPS)}")
    if kind == "rnn":
        _check_rnn(op, sizes, shapes, defined, mode)
        return
    x = _use(op, "x", defined, sizes)
    if kind == "embedding":
        rows, width = _tensor(op, "weight", shapes, 2)
        if x != 1:
            raise ProgramError(f"x holds {x} ids a step, expected 1")
        _define(op, "y", width, defined, sizes)
    elif kind == "linear":
        rows, cols = _tensor(op, "weight", shapes, 2)
        if cols != x:
            raise ProgramError(f"weight {op['weight']} has {cols} columns, x holds {x} features")
        if op.get("bias") is not None and _tensor(op, "bias", shapes) != (rows,):
            raise ProgramError(f"bias {op['bias']} does not hold {rows} values")
        _define(op, "y", rows, defined, sizes)
    elif kind == "layer_norm":
        size = _integer(op.get("size"), "size", 1)
        if x % size:
            raise ProgramError(f"size {size} does not divide the {x} features")
        for key in ("weight", "bias"):
            if op.get(key) is not None and math.prod(_tensor(op, key, shapes)) != size:
                raise ProgramError(f"{key} {op[key]} does not hold {size} values")
        if not isinstance(op.get("eps"), (int, float)) or op["eps"] < 0:
            raise ProgramError("eps must be a number >= 0")
        _define(op, "y", x, defined, sizes)
    elif kind in SOFTMAX:
        size = _integer(op.get("size"), "size", 1)
        if x % size:
            raise ProgramError(f"size {size} does not divide the {x} features")
        _define(op, "y", x, defined, sizes)
    elif kind in ELEMENTWISE:
        _define(op, "y", x, defined, sizes)
    elif kind in ARITHMETIC:
        given = [key for key in ("other", "weight", "scalar") if op.get(key) is not None]
        if len(given) != 1:
            raise ProgramError("exactly one of other, weight and scalar must be given")
        if given[0] == "other" and _use(op, "other", defined, sizes) != x:
            raise ProgramError(f"other holds {sizes[op['other']]} features, x {x}")
        if given[0] == "weight" and math.prod(_tensor(op, "weight", shapes)) != x:
            raise ProgramError(f"weight {op['weight']} does not hold {x} values")
        if given[0] == "scalar" and not isinstance(op["scalar"], (int, float)):
            raise ProgramError("scalar must be a number")
        _define(op, "y", x, defined, sizes)
    else:  # copy: one of several into y (a concatenation), or a slice
        outer, length = _integer(op.get("outer"), "outer", 1), _integer(op.get("length"), "length", 1)
        strides = [_integer(op.get(key), key) for key in ("x_stride", "x_offset", "y_stride", "y_offset")]
        y = sizes.get(op.get("y"))
        if y is None:
            raise ProgramError(f"y {op.get('y')!r} has no entry in values")
        if (outer - 1) * strides[0] + strides[1] + length > x or \
                (outer - 1) * strides[2] + strides[3] + length > y:
            raise ProgramError(f"{outer} runs of {length} do not fit x ({x}) and y ({y})")
        defined.add(op["y"])


def _check_rnn(op: dict, sizes: dict, shapes: dict, defined: set, mode: str) -> None:
    cell = op.get("cell")
    if cell not in GATES:
        raise ProgramError(f"cell must be one of {', '.join(GATES)}")
    layers = _integer(op.get("layers"), "layers", 1)
    hidden = _integer(op.get("hidden_size"), "hidden_size", 1)
    proj = _integer(op.get("proj_size"), "proj_size")
    if not isinstance(op.get("bidirectional"), bool):
        raise ProgramError("bidirectional must be true or false")
    directions = 2 if op["bidirectional"] else 1
    if directions == 2 and mode != "whole":
        raise ProgramError("a bidirectional layer needs mode whole")
    if proj and cell != "lstm":
        raise ProgramError("proj_size is for LSTM only")
    weights = op.get("weights")
    if not isinstance(weights, list) or len(weights) != layers * directions:
        raise ProgramError(f"weights must list {layers * directions} layers and directions")
    out = proj or hidden
    features = _use(op, "x", defined, sizes)
    gates = GATES[cell] * hidden
    for k, names in enumerate(weights):
        inputs = features if k < directions else out * directions
        expected = {"weight_ih": (gates, inputs), "weight_hh": (gates, out), "bias_ih": (gates,),
                    "bias_hh": (gates,)}
        if proj:
            expected["weight_hr"] = (proj, hidden)
        if not isinstance(names, dict) or set(names) - set(expected) or \
                not {"weight_ih", "weight_hh"} <= set(names) or (proj and "weight_hr" not in names):
            raise ProgramError(f"weights[{k}] must name weight_ih, weight_hh, the biases or neither"
                               f"{' and weight_hr' if proj else ''}")
        for key, name in names.items():
            if shapes.get(name) != expected[key]:
                raise ProgramError(f"weights[{k}].{key} {name!r} has shape {shapes.get(name)}, expected "
                                   f"{expected[key]}")
    for key in ("h0", "c0"):
        if op.get(key) is not None:
            if cell != "lstm" and key == "c0":
                raise ProgramError("c0 is for LSTM only")
            size = (out if key == "h0" else hidden) * layers * directions
            if _use(op, key, defined, sizes) != size:
                raise ProgramError(f"{key} must hold {size} features")
    _define(op, "y", out * directions, defined, sizes)
    for key, size in (("hn", out), ("cn", hidden)):
        if op.get(key) is not None:
            if cell != "lstm" and key == "cn":
                raise ProgramError("cn is for LSTM only")
            _define(op, key, size * layers * directions, defined, sizes)
