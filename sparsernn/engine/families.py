"""The engines of the built-in model families, on exported files.

:class:`TranslationEngine` builds the translation model from the file's architecture with
:func:`~sparsernn.engine.load_sparse`'s drop-ins (every recurrent, attention and output matrix on the
kernels) and runs the model's own greedy and beam-search decoding, each decoder step (layers, attention,
attentional vector, output layer) as one compiled :class:`~sparsernn.kernels.Program` call.

:class:`LanguageModelEngine` adds the embedding and the decoder to a :class:`RecurrentStack` and carries
the state between calls, so tokens can be fed one by one (streaming: each token's layers and decoder in
one compiled :class:`~sparsernn.kernels.Program` call) or as whole sequences; both give the masked
PyTorch model's outputs. :class:`SpeechEngine` runs an exported DS2 CTC model on one
utterance: convolutions (dense, torch), batch norms folded to scales and shifts, the recurrent layers
on the sparse kernels, the output layer, log-softmax, and greedy or beam decoding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sparsernn import kernels
from sparsernn.engine.stack import RecurrentStack, as_kernel_matrix
from sparsernn.export import ExportedModel, load_exported
from sparsernn.kernels import SparseMatrix


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
        self.decoder = as_kernel_matrix(decoder)
        self.decoder_bias = tensors["decoder.bias"]
        self.rnn = RecurrentStack.from_tensors(arch["cell"], tensors, "rnn.", arch["layers"],
                                               arch.get("bidirectional", False), threads=threads,
                                               backend=backend)
        self.threads, self.backend = threads, self.rnn.backend
        self.state, self._step = None, None

    def reset(self) -> None:
        """Forget the carried state (the next call starts from zeros)."""
        self.state = None

    def _start(self, batch: int) -> None:
        """Zero state for ``batch`` columns, and the program that runs a one-token call on it: the
        embedded token in, every layer and the decoder in one compiled call, the logits out."""
        self.state = self.rnn.initial_state(batch)
        x = np.empty((self.embedding.shape[1], batch), np.float32)
        step = self.rnn.step_operations(x, self.state)
        self._step = None
        if step is not None:
            operations, hidden = step
            logits = np.empty((self.decoder.shape[0], batch), np.float32)
            operations.append(("product", self.decoder, hidden, logits, self.decoder_bias))
            program = kernels.Program(operations, threads=self.threads, backend_name=self.backend)
            self._step = program, x, logits

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """``tokens`` (T, B) integer ids -> logits (T, B, V); continues from the previous call's state."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (T, B), got shape {tokens.shape}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= len(self.vocabulary)):
            raise ValueError(f"token ids must be in [0, {len(self.vocabulary)})")
        steps, batch = tokens.shape
        if self.state is None or self.state[0][0][0].shape[1] != batch:
            self._start(batch)
        if steps == 1 and self._step is not None:  # streaming: one compiled call per token
            program, x, logits = self._step
            x[...] = self.embedding[tokens[0]].T
            program()
            return logits.T[None].copy()  # (1, B, V)
        x = np.ascontiguousarray(self.embedding[tokens].transpose(2, 0, 1))  # (E, T, B)
        hidden = self.rnn(x, self.state)  # (H, T, B)
        logits = kernels.spmm(self.decoder, hidden.reshape(hidden.shape[0], -1), self.decoder_bias,
                              threads=self.threads, backend_name=self.backend)  # (V, T*B)
        return logits.reshape(-1, steps, batch).transpose(1, 2, 0)  # (T, B, V)


def _batch_norm(tensors: dict, prefix: str, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Inference batch norm as ``x * scale + shift`` per feature."""
    scale = tensors[f"{prefix}.weight"] / np.sqrt(tensors[f"{prefix}.running_var"] + eps)
    shift = tensors[f"{prefix}.bias"] - tensors[f"{prefix}.running_mean"] * scale
    return scale.astype(np.float32), shift.astype(np.float32)


def _conv2d(x: np.ndarray, weight: np.ndarray, stride: tuple[int, int]) -> np.ndarray:
    """PyTorch's Conv2d (no bias, zero padding of kernel // 2) on one input (C, bins, T).

    The convolutions stay dense, so the best dense library does them (torch's oneDNN convolution
    rather than im2col and a numpy GEMM, which was several times slower on the development machine).
    """
    padding = (weight.shape[2] // 2, weight.shape[3] // 2)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(torch.from_numpy(x)[None], torch.from_numpy(weight), stride=stride,
                                         padding=padding)
    return out[0].numpy()


class SpeechEngine:
    """An exported DS2 CTC model: ``engine.log_probs(features)`` or ``engine.transcribe(audio, rate)``."""

    def __init__(self, model: ExportedModel | str | Path, *, threads: int = 1, backend: str = "auto"):
        if not isinstance(model, ExportedModel):
            model = load_exported(model)
        arch = self.architecture = model.architecture
        if arch.get("kind") != "speech_ctc":
            raise ValueError(f"not a speech model: kind {arch.get('kind')!r}")
        dense = {name: t.to_dense() if isinstance(t, SparseMatrix) else t
                 for name, t in model.tensors.items()}
        self.alphabet = model.metadata["vocabulary"]
        self.convs = [(dense[f"conv.{3 * i}.weight"], tuple(conv["stride"]),
                       *_batch_norm(dense, f"conv.{3 * i + 1}")) for i, conv in enumerate(arch["conv"])]
        self.rnns = [RecurrentStack.from_tensors(arch["cell"], model.tensors, f"rnns.{i}.", 1,
                                                 arch["bidirectional"], threads=threads, backend=backend)
                     for i in range(arch["layers"])]
        # Files written before the first layer's norm existed have no "input_norm": none, as trained.
        self.input_norm = _batch_norm(dense, "input_norm.norm") if arch.get("input_norm") else None
        self.norms = [_batch_norm(dense, f"norms.{i}.norm") for i in range(arch["layers"] - 1)]
        self.output_norm = _batch_norm(dense, "output_norm.norm")
        self.fc, self.fc_bias = as_kernel_matrix(model.tensors["fc.weight"]), dense["fc.bias"]
        self.threads, self.backend = threads, self.rnns[0].backend

    def log_probs(self, features: np.ndarray) -> np.ndarray:
        """Features (bins, T) of one utterance -> CTC log-probabilities (T', alphabet)."""
        x = np.asarray(features, np.float32)[None]  # (1, bins, T)
        for weight, stride, scale, shift in self.convs:
            x = np.clip(_conv2d(x, weight, stride) * scale[:, None, None] + shift[:, None, None], 0.0, 20.0)
        x = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))  # (C * bins', T')
        hidden = self.architecture["hidden_size"]
        for i, rnn in enumerate(self.rnns):
            norm = self.input_norm if i == 0 else self.norms[i - 1]
            if norm is not None:
                scale, shift = norm
                x = x * scale[:, None] + shift[:, None]
            out = rnn(np.ascontiguousarray(x[:, :, None]), rnn.initial_state(1))[:, :, 0]  # (dirs*H, T')
            x = out[:hidden] + out[hidden:] if len(out) > hidden else out  # directions summed
        scale, shift = self.output_norm
        x = np.ascontiguousarray(x * scale[:, None] + shift[:, None])
        logits = kernels.spmm(self.fc, x, self.fc_bias, threads=self.threads, backend_name=self.backend).T
        logits = logits - logits.max(axis=1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))  # (T', alphabet)

    def features(self, audio: np.ndarray, rate: int) -> np.ndarray:
        """The model's input features for float audio at ``rate`` Hz."""
        from types import SimpleNamespace

        from sparsernn.data import speech

        config = SimpleNamespace(**self.architecture["input"])
        return speech.features(speech.resample(np.asarray(audio, np.float32), rate, config.sample_rate),
                               config).numpy()

    def transcribe(self, audio: np.ndarray, rate: int, beam: int = 0, lm=None) -> str:
        """Text of one utterance: greedy decoding, or prefix beam search of width ``beam``, with a word
        language model fused if ``lm`` (a :class:`~sparsernn.train.metrics.LMFusion`) is given."""
        from sparsernn.train.metrics import greedy_decode, prefix_beam_decode

        frames = torch.from_numpy(self.log_probs(self.features(audio, rate)))
        if beam > 0:
            return prefix_beam_decode(frames, self.alphabet, beam, lm=lm)
        if lm is not None:
            raise ValueError("a language model needs a beam search: beam must be > 0")
        return greedy_decode(frames, self.alphabet)


class TranslationEngine:
    """An exported translation model: ``engine.translate(lines, beam=0)`` -> detokenized translations."""

    def __init__(self, model: ExportedModel | str | Path, *, threads: int = 1, backend: str = "auto"):
        import base64

        from sparsernn.config import Seq2SeqConfig
        from sparsernn.data.translation import Tokenizer
        from sparsernn.engine.modules import load_sparse
        from sparsernn.models.seq2seq import Seq2Seq

        if not isinstance(model, ExportedModel):
            model = load_exported(model)
        arch = self.architecture = model.architecture
        if arch.get("kind") != "translation":
            raise ValueError(f"not a translation model: kind {arch.get('kind')!r}")
        config = Seq2SeqConfig(**{key: arch[key] for key in Seq2SeqConfig.model_fields})
        self.model = load_sparse(Seq2Seq(arch["vocab_size"], config), model, threads=threads, backend=backend)
        self.model.decode_step = _DecodeStep(self.model, threads, backend)  # for its greedy and beam search
        self.tokenizer = Tokenizer(base64.b64decode(model.metadata["tokenizer"]))

    def translate(self, lines: list[str], beam: int = 0) -> list[str]:
        """One translation per line: greedy, or beam search of width ``beam``."""
        from sparsernn.train.translate import translate_lines

        with torch.inference_mode():
            return translate_lines(self.model, self.tokenizer, lines, beam, self.architecture["max_output"])


class _DecodeStep:
    """``Seq2Seq.decode_step`` of a model whose modules are drop-ins (:func:`load_sparse`): the decoder's
    layers, the attention, the attentional vector and the output layer as one compiled
    :class:`~sparsernn.kernels.Program` call per step, the same equations as the model's own. A program
    serves one encoder output at one batch size; a new one is built when either changes (the next
    batch of sentences; a beam whose number of hypotheses changed)."""

    def __init__(self, model, threads: int, backend: str):
        self.model, self.threads, self.backend = model, threads, backend
        self.embedding = model.target_embedding.weight.detach().numpy()  # (V, E)
        additive = model.config.attention == "bahdanau"
        self.score = model.attention_score.weight_matrix.to_dense()[0] if additive else None
        self.encoded = self.returned = None

    def _build(self, encoded, batch: int) -> None:
        model, hidden = self.model, self.model.config.hidden_size
        words = self.embedding.shape[1]
        self.x = np.zeros((words + hidden, batch), np.float32)  # [embedded word; attentional vector]
        joined = np.empty((2 * hidden, batch), np.float32)  # [decoder output; context]
        self.state = model.decoder.stack.initial_state(batch)
        operations, output = model.decoder.stack.step_operations(self.x, self.state, out=joined[:hidden])
        query = output
        if self.score is not None:
            query = np.empty((hidden, batch), np.float32)
            operations.append(("product", model.attention_query.weight_matrix, output, query,
                               model.attention_query.bias_vector))
        keys, memory = (np.ascontiguousarray(t.numpy(), np.float32) for t in (encoded.keys, encoded.memory))
        lengths = encoded.mask.sum(dim=1).numpy().astype(np.int32)
        combined = np.empty((hidden, batch), np.float32)
        self.logits = np.empty((self.embedding.shape[0], batch), np.float32)
        operations += [("attention", query, keys, memory, lengths, self.score, joined[hidden:]),
                       ("product", model.combine.weight_matrix, joined, combined, model.combine.bias_vector),
                       ("tanh", combined, self.x[words:]),
                       ("product", model.output.weight_matrix, self.x[words:], self.logits,
                        model.output.bias_vector)]
        self.program = kernels.Program(operations, threads=self.threads, backend_name=self.backend)
        self.encoded = encoded

    def __call__(self, words: torch.Tensor, state, feed: torch.Tensor, encoded):
        if encoded is not self.encoded or len(words) != self.x.shape[1]:
            self._build(encoded, len(words))
            self.returned = None  # the state and feed last returned, which the buffers then hold
        size = self.embedding.shape[1]
        self.x[:size] = self.embedding[words.numpy()].T
        if self.returned is None or state is not self.returned[0] or feed is not self.returned[1]:
            self.x[size:] = feed.numpy().T
            parts = state if isinstance(state, tuple) else (state,)
            for k, ((h, c),) in enumerate(self.state):
                h[...] = parts[0][k].numpy().T
                if c is not None:
                    c[...] = parts[1][k].numpy().T
        self.program()
        new = [torch.from_numpy(np.stack([layer[0][part].T for layer in self.state]))
               for part in range(2 if isinstance(state, tuple) else 1)]
        self.returned = (tuple(new) if isinstance(state, tuple) else new[0],
                         torch.from_numpy(self.x[size:].T.copy()))
        return torch.from_numpy(self.logits.T.copy()), *self.returned
