"""Model files: any model's weights, pruned matrices as CSR or blocks, in one safetensors file.

The file is described in docs/FORMAT.md and reads with numpy and safetensors alone.
:func:`save_sparse` writes it from any model (its state dict, the options of its recurrent and linear
modules, and for the built-in families an ``architecture``); :func:`load_exported` reads it back,
checking the format version, a SHA-256 over every tensor and the metadata, shapes against the metadata
and every index range, so a damaged or foreign file fails when it is loaded, never later with a wrong
result. :func:`sparsernn.engine.load_sparse` loads a file into a fresh instance of the user's class.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparsernn.errors import UserError
from sparsernn.export.program import ProgramError, check_program
from sparsernn.kernels import CELLS, FormatError, SparseMatrix, bf16_bits, bf16_values, smallest_layout

FORMAT = 4
#: Formats this sparsernn reads: 2 (no program), 3 (an optional program in the metadata) and 4 (int8
#: values, uint8 block-column indices).
READABLE = (2, 3, 4)
VALUE_TYPES = ("fp32", "fp16", "bf16", "int8")


class ExportError(UserError):
    """A model file that cannot be read: missing, truncated, altered or of another format."""


@dataclass
class ExportedModel:
    """A loaded file: its metadata and each stored tensor as a SparseMatrix (float32) or an array.

    Tied tensors (``metadata["ties"]``: name -> the name stored) appear once, under the stored name.
    """

    metadata: dict
    tensors: dict[str, SparseMatrix | np.ndarray]
    path: Path | None = None  # the file it was read from

    @property
    def architecture(self) -> dict:
        if "architecture" not in self.metadata:
            raise ExportError("this file holds a user's own model (no built-in architecture); load it with "
                              "sparsernn.load_sparse(YourModel(...), path)")
        return self.metadata["architecture"]


# -- value encodings -------------------------------------------------------------------------------

def encode_values(values: np.ndarray, kind: str) -> np.ndarray:
    """float32 values as stored: fp32 as is, fp16, or bf16 as the upper 16 bits (uint16, rounded to
    nearest even) since numpy has no bfloat16. (int8 values take a scale per row: see save_sparse.)"""
    if kind == "fp32":
        return values.astype(np.float32)
    if kind == "fp16":
        return values.astype(np.float16)
    return bf16_bits(values)


def decode_values(stored: np.ndarray, kind: str) -> np.ndarray:
    if kind == "bf16":
        return bf16_values(stored)
    return stored.astype(np.float32)


# -- writing ---------------------------------------------------------------------------------------

#: The modules :func:`sparsernn.engine.sparsify` replaces, and the options of each that the file records
#: and :func:`sparsernn.engine.load_sparse` checks (``dropout`` acts in training only and is left out).
MODULE_OPTIONS = {
    nn.RNN: ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional",
             "nonlinearity"),
    nn.GRU: ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional"),
    nn.LSTM: ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional", "proj_size"),
    nn.RNNCell: ("input_size", "hidden_size", "bias", "nonlinearity"),
    nn.GRUCell: ("input_size", "hidden_size", "bias"),
    nn.LSTMCell: ("input_size", "hidden_size", "bias"),
    nn.Linear: ("in_features", "out_features", "bias"),
}


def module_options(module: nn.Module) -> dict | None:
    """``{"type": ..., options}`` of a module :func:`sparsify` replaces (exact types only), else None."""
    names = MODULE_OPTIONS.get(type(module))
    if names is None:
        return None
    options = {name: getattr(module, name) for name in names}
    if "bias" in options and not isinstance(options["bias"], bool):  # nn.Linear keeps the tensor
        options["bias"] = options["bias"] is not None
    return {"type": type(module).__name__, **options}


def gate_rows(model: nn.Module) -> dict[str, int]:
    """Weights whose rows stack gates, with the hidden size (blocks must not straddle two gates)."""
    units = {}
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
            for name, _ in module.named_parameters(recurse=False):
                if name.startswith(("weight_ih", "weight_hh")):
                    units[f"{prefix}.{name}" if prefix else name] = module.hidden_size
    return units


def _digest(tensors: dict[str, np.ndarray], metadata: dict) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes, in sorted name order), then the metadata
    without its ``sha256`` key as canonical JSON (sorted keys, no spaces)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    described = {key: value for key, value in metadata.items() if key != "sha256"}
    digest.update(json.dumps(described, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def _stored_array(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.contiguous().numpy()  # (np.ascontiguousarray would make a 0-d counter 1-d)


def save_sparse(model: nn.Module, path: str | Path, *, values: str = "fp32",
                extra: dict | None = None, example_inputs: tuple | None = None) -> dict:
    """Write ``model``'s state dict to ``path``: every floating-point matrix in the layout that takes the
    fewest bytes (CSR, the kernels' blocks, or dense), every other tensor as is, tied tensors once.

    Pruned weights are the zeros in the model's weights (the Pruner applies its masks in place).
    ``values`` (fp32, fp16, bf16, int8) encodes the values of the sparse matrices (int8: with a scale per
    row; products of one column then run in int8, see :class:`~sparsernn.kernels.SparseMatrix`);
    ``extra`` adds keys to the metadata. With ``example_inputs`` (the forward's positional arguments for
    a whole sequence) the file also holds the forward as a program
    (:func:`sparsernn.engine.lower.lower`), which :func:`~sparsernn.engine.load_sparse` and the C
    runtime run; a forward that cannot be lowered raises
    :class:`~sparsernn.engine.lower.LoweringError`. Returns a summary: file bytes, dense fp32 bytes,
    per-tensor storage and sparsity.
    """
    from safetensors.numpy import save_file

    if values not in VALUE_TYPES:
        raise ValueError(f"values must be one of {', '.join(VALUE_TYPES)}, got {values!r}")
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    program = None
    if example_inputs is not None:
        from sparsernn.engine.lower import lower

        program = lower(model, example_inputs)
    units = gate_rows(model)
    tensors, matrices, ties, seen, dense_bytes = {}, {}, {}, {}, 0
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tensor.stride(), tensor.dtype)
        if key in seen:  # tied: the same storage as an earlier tensor
            ties[name] = seen[key]
            continue
        seen[key] = name
        array = _stored_array(tensor)
        dense_bytes += array.size * 4 if array.dtype.kind == "f" else array.nbytes
        matrix = None
        if array.ndim == 2 and array.dtype.kind == "f":
            matrix = smallest_layout(array, units.get(name))
        if matrix is not None:
            tensors[f"{name}.rowptr"] = matrix.rowptr
            narrow = matrix.index.dtype == np.uint16 and matrix.shape[1] // matrix.block[1] <= 256
            tensors[f"{name}.index"] = matrix.index.astype(np.uint8) if narrow else matrix.index
            if values == "int8":  # integers in [-127, 127] and a scale per row
                matrix = matrix.to_int8()
                tensors[f"{name}.values"] = matrix.int8.reshape(matrix.values.shape)
                tensors[f"{name}.scales"] = matrix.scales
            else:
                tensors[f"{name}.values"] = encode_values(matrix.values, values)
            nonzeros = int(np.count_nonzero(array))
            matrices[name] = {"storage": "csr" if matrix.block == (1, 1) else "blocks",
                              "shape": list(array.shape), "block": list(matrix.block), "values": values,
                              "nonzeros": nonzeros, "sparsity": 1 - nonzeros / array.size}
        else:
            tensors[name] = array
            matrices[name] = {"storage": "dense", "shape": list(array.shape), "dtype": array.dtype.name,
                              "nonzeros": int(np.count_nonzero(array)),
                              "sparsity": 1 - int(np.count_nonzero(array)) / max(1, array.size)}
    modules = {prefix: options for prefix, module in model.named_modules()
               if (options := module_options(module)) is not None}
    metadata = {"format": FORMAT, "modules": modules, "ties": ties,
                "gate_layout": {"lstm": "i,f,g,o", "gru": "r,z,n", "rows": "stacked along dim 0"},
                "matrices": matrices, **(extra or {})}
    if program is not None:
        metadata["program"] = program
    metadata["sha256"] = _digest(tensors, metadata)
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    save_file(tensors, str(temporary), metadata={"sparsernn": json.dumps(metadata)})
    os.replace(temporary, path)
    return {"path": str(path), "bytes": path.stat().st_size, "dense_fp32_bytes": dense_bytes,
            "matrices": matrices}


def lm_architecture(model_config: dict, vocab_size: int, level: str = "word") -> dict:
    """The ``architecture`` metadata of a language model (``model_config``: ModelConfig fields)."""
    return {"kind": "language_model", **model_config, "vocab_size": vocab_size, "bidirectional": False,
            "level": level}


def speech_architecture(model_config: dict, data_config: dict, alphabet_size: int) -> dict:
    """The ``architecture`` metadata of a DS2 speech model: its model config and the features it takes."""
    features = {key: data_config[key] for key in ("sample_rate", "features", "n_mels", "window_ms", "hop_ms")}
    return {"kind": "speech_ctc", **model_config, "alphabet_size": alphabet_size, "input": features}


def export_checkpoint(checkpoint_path: str | Path, out: str | Path, values: str = "fp32") -> dict:
    """Export a trained language-model or speech checkpoint (``sparsernn export``)."""
    from sparsernn.config import config_to_dict
    from sparsernn.train.evaluate import load_trained

    model, config, vocabulary, checkpoint = load_trained(checkpoint_path)  # masks already applied
    extra = {}
    if config.speech:
        architecture = speech_architecture(model.config.model_dump(mode="json"),
                                           config_to_dict(config)["data"], len(vocabulary))
    elif config.translation:
        architecture = {"kind": "translation", **checkpoint["model_config"], "vocab_size": len(vocabulary),
                        "source": config.data.source, "target": config.data.target,
                        "max_output": config.data.max_output}
        extra["tokenizer"] = base64.b64encode(checkpoint["artifacts"]["tokenizer.model"]).decode()
    else:
        architecture = lm_architecture(checkpoint["model_config"], len(vocabulary), config.data.level)
    return save_sparse(model, out, values=values,
                       extra={"architecture": architecture, "vocabulary": vocabulary, **extra,
                              "source": str(checkpoint_path), "step": checkpoint["loop"]["step"]})


# -- reading ---------------------------------------------------------------------------------------

def load_exported(path: str | Path) -> ExportedModel:
    """Read and check a model file; raises :class:`ExportError` naming the file and the problem."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
            stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise ExportError(f"{path}: not a readable safetensors file ({error})") from None
    if "sparsernn" not in header:
        raise ExportError(f"{path}: no sparsernn metadata; not a sparsernn model file")
    try:
        metadata = json.loads(header["sparsernn"])
    except json.JSONDecodeError as error:
        raise ExportError(f"{path}: metadata is not valid JSON ({error})") from None
    if metadata.get("format") not in READABLE:
        raise ExportError(f"{path}: format version {metadata.get('format')!r}; this sparsernn reads "
                          f"{' and '.join(map(str, READABLE))} (export the model again)")
    if _digest(stored, metadata) != metadata.get("sha256"):
        raise ExportError(f"{path}: tensors or metadata do not match the file's SHA-256; the file was "
                          "altered or damaged")
    if "architecture" in metadata:
        _check_architecture(path, metadata)
    tensors = {}
    for name, info in metadata["matrices"].items():
        try:
            tensors[name] = _matrix(name, info, stored)
        except (KeyError, FormatError, ValueError) as error:
            raise ExportError(f"{path}: tensor {name}: {error}") from None
    if "program" in metadata:
        shapes = {name: tuple(info["shape"]) for name, info in metadata["matrices"].items()}
        shapes |= {name: shapes[stored] for name, stored in metadata.get("ties", {}).items()
                   if stored in shapes}
        try:
            check_program(metadata["program"], shapes)
        except (ProgramError, KeyError, TypeError, AttributeError) as error:
            raise ExportError(f"{path}: program: {error}") from None
    return ExportedModel(metadata, tensors, path)


def _check_architecture(path: Path, metadata: dict) -> None:
    """A built-in family's file holds exactly the weights its architecture names."""
    try:
        expected = expected_shapes(metadata["architecture"])
    except (KeyError, TypeError, ValueError) as error:
        raise ExportError(f"{path}: architecture metadata is incomplete ({error})") from None
    shapes = {name: tuple(info["shape"]) for name, info in metadata.get("matrices", {}).items()
              if not name.endswith("num_batches_tracked")}  # a batch norm's training counter
    if shapes != expected:
        wrong = sorted(set(shapes) ^ set(expected) | {n for n in shapes if shapes[n] != expected.get(n)})
        raise ExportError(f"{path}: tensors {', '.join(wrong)} do not match the architecture "
                          f"(expected {', '.join(f'{n} {expected.get(n)}' for n in wrong[:3])})")


def expected_shapes(architecture: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a model of this architecture stores, with its shape."""
    if architecture["kind"] == "speech_ctc":
        return _speech_shapes(architecture)
    if architecture["kind"] == "translation":
        return _translation_shapes(architecture)
    if architecture["kind"] != "language_model":
        raise ValueError(f"unknown kind {architecture['kind']!r}")
    gates = CELLS[architecture["cell"]]
    vocab, embedding = architecture["vocab_size"], architecture["embedding_size"]
    hidden, directions = architecture["hidden_size"], 2 if architecture.get("bidirectional") else 1
    shapes = {"embedding.weight": (vocab, embedding), "decoder.bias": (vocab,)}
    if not architecture["tie_weights"]:
        shapes["decoder.weight"] = (vocab, hidden * directions)
    for layer in range(architecture["layers"]):
        inputs = embedding if layer == 0 else hidden * directions
        for suffix in ["", "_reverse"][:directions]:
            shapes |= {f"rnn.weight_ih_l{layer}{suffix}": (gates * hidden, inputs),
                       f"rnn.weight_hh_l{layer}{suffix}": (gates * hidden, hidden),
                       f"rnn.bias_ih_l{layer}{suffix}": (gates * hidden,),
                       f"rnn.bias_hh_l{layer}{suffix}": (gates * hidden,)}
    return shapes


def _norm(prefix: str, size: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{name}": (size,) for name in ("weight", "bias", "running_mean", "running_var")}


def _speech_shapes(architecture: dict) -> dict[str, tuple[int, ...]]:
    from types import SimpleNamespace

    from sparsernn.data.speech import feature_size
    from sparsernn.models.ctc import conv_output_size

    gates, hidden = CELLS[architecture["cell"]], architecture["hidden_size"]
    shapes, channels = {}, 1
    bins = feature_size(SimpleNamespace(**architecture["input"]))
    for i, conv in enumerate(architecture["conv"]):
        shapes[f"conv.{3 * i}.weight"] = (conv["channels"], channels, *conv["kernel"])
        shapes |= _norm(f"conv.{3 * i + 1}", conv["channels"])
        channels, bins = conv["channels"], conv_output_size(bins, conv["kernel"][0], conv["stride"][0])
    inputs = channels * bins
    if architecture.get("input_norm"):  # absent in files written before it existed
        shapes |= _norm("input_norm.norm", inputs)
    for layer in range(architecture["layers"]):
        for suffix in ["", "_reverse"][:2 if architecture["bidirectional"] else 1]:
            shapes |= {f"rnns.{layer}.weight_ih_l0{suffix}": (gates * hidden, inputs),
                       f"rnns.{layer}.weight_hh_l0{suffix}": (gates * hidden, hidden),
                       f"rnns.{layer}.bias_ih_l0{suffix}": (gates * hidden,),
                       f"rnns.{layer}.bias_hh_l0{suffix}": (gates * hidden,)}
        if layer > 0:
            shapes |= _norm(f"norms.{layer - 1}.norm", hidden)
        inputs = hidden
    return shapes | _norm("output_norm.norm", hidden) | {
        "fc.weight": (architecture["alphabet_size"], hidden), "fc.bias": (architecture["alphabet_size"],)}


def _translation_shapes(architecture: dict) -> dict[str, tuple[int, ...]]:
    """The state of a translation model built on the meta device (tied output weights stored once)."""
    from sparsernn.config import Seq2SeqConfig
    from sparsernn.models.seq2seq import Seq2Seq

    config = Seq2SeqConfig(**{key: architecture[key] for key in Seq2SeqConfig.model_fields})
    with torch.device("meta"):
        state = Seq2Seq(architecture["vocab_size"], config).state_dict()
    return {name: tuple(t.shape) for name, t in state.items()
            if not (config.tie_weights and name == "output.weight")}


def _index(index: np.ndarray) -> np.ndarray:
    """Block-column indices as the kernels take them: a file's uint8 ones (matrices of at most 256 block
    columns, format 4) widened to uint16."""
    return index.astype(np.uint16) if index.dtype == np.uint8 else index


def _matrix(name: str, info: dict, stored: dict[str, np.ndarray]) -> SparseMatrix | np.ndarray:
    shape = tuple(info["shape"])
    if info["storage"] == "dense":
        array = stored[name]
        if array.shape != shape or array.dtype.name != info.get("dtype"):
            raise FormatError(f"shape {array.shape} {array.dtype}, metadata says {shape} {info.get('dtype')}")
        return array
    if info.get("values") not in VALUE_TYPES:
        raise FormatError(f"unknown value type {info.get('values')!r}")
    r, c = info["block"]
    stored = {**stored, f"{name}.index": _index(stored[f"{name}.index"])}
    if info["values"] == "int8":
        if f"{name}.scales" not in stored:
            raise FormatError(f"int8 values without the tensor {name}.scales")
        return SparseMatrix.from_int8(shape, (r, c), stored[f"{name}.rowptr"], stored[f"{name}.index"],
                                      stored[f"{name}.values"], stored[f"{name}.scales"])
    values = decode_values(stored[f"{name}.values"], info["values"])
    if values.ndim != 3 or values.shape[1:] != (r, c):
        raise FormatError(f"values of shape {values.shape} do not hold {r}x{c} blocks")
    return SparseMatrix(shape, (r, c), stored[f"{name}.rowptr"], stored[f"{name}.index"],
                        np.ascontiguousarray(values), bf16=info["values"] == "bf16")
