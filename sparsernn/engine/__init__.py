"""Inference on exported models with the sparse kernels: whole sequences or one step at a time.

:class:`RecurrentStack` runs RNN/GRU/LSTM layers (uni- or bidirectional) over a sequence: per layer
and direction, the input projections of all time steps as one sparse-times-dense product, then the
recurrence with gates fused in one compiled call. :class:`LanguageModelEngine` adds the embedding and
the decoder and carries the state between calls, so tokens can be fed one by one (streaming) or as
whole sequences; both give the masked PyTorch model's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsernn import kernels
from sparsernn.export import ExportedModel, load_exported
from sparsernn.kernels import CELLS, SparseMatrix


def as_sparse(weight: SparseMatrix | np.ndarray) -> SparseMatrix:
    """Kernels take every matrix as a SparseMatrix; a dense one becomes CSR with all entries."""
    if isinstance(weight, SparseMatrix):
        return weight
    return SparseMatrix.from_dense(weight)


@dataclass
class Direction:
    weight_ih: SparseMatrix
    bias_ih: np.ndarray
    weight_hh: SparseMatrix
    bias_hh: np.ndarray


class RecurrentStack:
    """``layers`` lists of one (forward) or two (forward, backward) directions, PyTorch's equations."""

    def __init__(self, cell: str, layers: list[list[Direction]], *, threads: int = 1, backend: str = "auto"):
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; valid: {', '.join(CELLS)}")
        self.cell, self.layers, self.threads = cell, layers, threads
        self.backend = kernels.backend(backend)
        self.hidden_size = layers[0][0].weight_hh.shape[1]

    @classmethod
    def from_tensors(cls, cell: str, tensors: dict, prefix: str, num_layers: int, bidirectional: bool,
                     **options) -> RecurrentStack:
        """From PyTorch-named tensors (``{prefix}weight_ih_l0``, ``..._reverse``, biases)."""
        suffixes = ["", "_reverse"] if bidirectional else [""]
        layers = [[Direction(as_sparse(tensors[f"{prefix}weight_ih_l{k}{s}"]),
                             np.asarray(tensors[f"{prefix}bias_ih_l{k}{s}"], np.float32),
                             as_sparse(tensors[f"{prefix}weight_hh_l{k}{s}"]),
                             np.asarray(tensors[f"{prefix}bias_hh_l{k}{s}"], np.float32))
                   for s in suffixes] for k in range(num_layers)]
        return cls(cell, layers, **options)

    def initial_state(self, batch: int) -> list[list[tuple[np.ndarray, np.ndarray | None]]]:
        """Zero (h, c) per layer and direction, each (H, B); c is None except for LSTM."""
        shape = (self.hidden_size, batch)
        return [[(np.zeros(shape, np.float32), np.zeros(shape, np.float32) if self.cell == "lstm" else None)
                 for _ in layer] for layer in self.layers]

    def __call__(self, x: np.ndarray, state) -> np.ndarray:
        """``x`` (features, T, B) feature-major; ``state`` updated in place. Returns (dirs*H, T, B)."""
        features, steps, batch = x.shape
        for layer, layer_state in zip(self.layers, state, strict=True):
            flat = x.reshape(features, steps * batch)
            outputs = []
            for reverse, (direction, (h, c)) in enumerate(zip(layer, layer_state, strict=True)):
                projected = kernels.spmm(direction.weight_ih, flat, direction.bias_ih, threads=self.threads,
                                         backend_name=self.backend)  # (G*H, T*B)
                xproj = np.ascontiguousarray(projected.reshape(-1, steps, batch).transpose(1, 0, 2))
                out = kernels.recurrent(self.cell, direction.weight_hh, direction.bias_hh, xproj, h, c,
                                        reverse=bool(reverse), threads=self.threads,
                                        backend_name=self.backend)  # (T, H, B)
                outputs.append(out.transpose(1, 0, 2))
            x = np.ascontiguousarray(np.concatenate(outputs) if len(outputs) > 1 else outputs[0])
            features = x.shape[0]
        return x


class LanguageModelEngine:
    """An exported language model: ``engine(tokens)`` -> logits, state carried between calls."""

    def __init__(self, model: ExportedModel | str | Path, *, threads: int = 1, backend: str = "auto"):
        if not isinstance(model, ExportedModel):
            model = load_exported(model)
        arch = model.architecture
        if arch.get("kind") != "language_model":
            raise ValueError(f"not a language model: kind {arch.get('kind')!r}")
        tensors = model.tensors
        self.vocabulary = model.metadata["vocabulary"]
        embedding = tensors["embedding.weight"]
        self.embedding = embedding.to_dense() if isinstance(embedding, SparseMatrix) else embedding
        decoder = tensors["embedding.weight" if arch["tie_weights"] else "decoder.weight"]
        self.decoder = as_sparse(decoder)
        self.decoder_bias = tensors["decoder.bias"]
        self.rnn = RecurrentStack.from_tensors(arch["cell"], tensors, "rnn.", arch["layers"],
                                               arch.get("bidirectional", False), threads=threads,
                                               backend=backend)
        self.threads, self.backend = threads, self.rnn.backend
        self.state = None

    def reset(self) -> None:
        """Forget the carried state (the next call starts from zeros)."""
        self.state = None

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """``tokens`` (T, B) integer ids -> logits (T, B, V); continues from the previous call's state."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (T, B), got shape {tokens.shape}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= len(self.vocabulary)):
            raise ValueError(f"token ids must be in [0, {len(self.vocabulary)})")
        steps, batch = tokens.shape
        if self.state is None or self.state[0][0][0].shape[1] != batch:
            self.state = self.rnn.initial_state(batch)
        x = np.ascontiguousarray(self.embedding[tokens].transpose(2, 0, 1))  # (E, T, B)
        hidden = self.rnn(x, self.state)  # (H, T, B)
        logits = kernels.spmm(self.decoder, hidden.reshape(hidden.shape[0], -1), self.decoder_bias,
                              threads=self.threads, backend_name=self.backend)  # (V, T*B)
        return logits.reshape(-1, steps, batch).transpose(1, 2, 0)  # (T, B, V)
