"""Deep Speech 2 family (Amodei et al. 2016) for CTC: 2-D convolutions with batch norm and clipped
ReLU -> recurrent layers, each after a sequence-wise batch norm -> a fully connected layer.

The recurrent layers are ``nn.RNN``/``nn.GRU``/``nn.LSTM`` (one layer each, so that batch norm can sit
between them), which the pruner finds as the ``recurrent`` group and gates as PyTorch lays them out;
the output layer is an ``nn.Linear`` (``linear`` group); convolutions (``conv``) stay dense unless
asked. A vanilla RNN with clipped ReLU, ``min(max(x, 0), 20)`` as in DS2, is an ``nn.RNN`` whose
forward runs that recurrence. Bidirectional layers sum their two directions, as DS2 does.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsernn.config import SpeechModelConfig

CLIP = 20.0


def clipped_relu(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, CLIP)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x`` (T, B, F) within its own length, leaving the padding in place."""
    steps = torch.arange(x.shape[0], device=x.device)[:, None]  # (T, 1)
    lengths = lengths.to(x.device)[None]  # (1, B)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (T, B)
    return x.gather(0, index[..., None].expand_as(x))


class ClippedReLURNN(nn.RNN):
    """One-layer vanilla RNN ``h_t = min(max(W x_t + U h_{t-1} + b, 0), 20)``, PyTorch's parameter names.

    The input projection of every step is one matrix product; the loop runs the recurrent product.
    """

    def __init__(self, input_size: int, hidden_size: int, bidirectional: bool):
        super().__init__(input_size, hidden_size, 1, nonlinearity="relu", bidirectional=bidirectional)

    def _direction(self, x: torch.Tensor, suffix: str) -> torch.Tensor:
        w_ih, w_hh = getattr(self, f"weight_ih_l0{suffix}"), getattr(self, f"weight_hh_l0{suffix}")
        projected = x @ w_ih.t() + getattr(self, f"bias_ih_l0{suffix}") + getattr(self, f"bias_hh_l0{suffix}")
        h = x.new_zeros(x.shape[1], self.hidden_size)
        outputs = []
        for step in projected:  # (B, H)
            h = clipped_relu(step + h @ w_hh.t())
            outputs.append(h)
        return torch.stack(outputs)  # (T, B, H)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = self._direction(x, "")
        if self.bidirectional:
            out = torch.cat([out, reverse_padded(self._direction(reverse_padded(x, lengths), "_reverse"),
                                                 lengths)], dim=-1)
        return out  # (T, B, directions * H)


_RECURRENT = {
    "rnn_tanh": lambda i, h, b: nn.RNN(i, h, 1, nonlinearity="tanh", bidirectional=b),
    "gru": lambda i, h, b: nn.GRU(i, h, 1, bidirectional=b),
    "lstm": lambda i, h, b: nn.LSTM(i, h, 1, bidirectional=b),
    "rnn_clipped_relu": ClippedReLURNN,
}


class SequenceBatchNorm(nn.Module):
    """Sequence-wise batch norm (DS2 section 3.2): statistics over every valid frame of the batch,
    padding excluded."""

    def __init__(self, size: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x (T, B, F), mask (T, B)
        out = torch.zeros_like(x)
        out[mask] = self.norm(x[mask])
        return out


def conv_output_size(length: torch.Tensor | int, kernel: int, stride: int):
    """Output length of a convolution padded by ``kernel // 2`` on both sides."""
    return (length + 2 * (kernel // 2) - kernel) // stride + 1


class SpeechModel(nn.Module):
    def __init__(self, features: int, alphabet_size: int, config: SpeechModelConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels, bins = 1, features
        for conv in config.conv:
            layers += [nn.Conv2d(channels, conv.channels, conv.kernel, conv.stride,
                                 padding=(conv.kernel[0] // 2, conv.kernel[1] // 2), bias=False),
                       nn.BatchNorm2d(conv.channels), nn.Hardtanh(0.0, CLIP)]
            channels, bins = conv.channels, conv_output_size(bins, conv.kernel[0], conv.stride[0])
        self.conv = nn.Sequential(*layers)
        directions = 2 if config.bidirectional else 1
        sizes = [channels * bins] + [config.hidden_size] * config.layers
        self.rnns = nn.ModuleList(_RECURRENT[config.cell](sizes[i], config.hidden_size, config.bidirectional)
                                  for i in range(config.layers))
        if config.input_init == "fan_in":
            # PyTorch draws every weight of a recurrent layer within 1/sqrt(hidden size), so a narrow layer
            # on a wide input starts with saturated gates (GRU 35 on 512 normalised inputs: pre-activations
            # of deviation 2.2, against 0.9 for GRU 192); drawn by fan-in, every width starts near 0.6.
            with torch.no_grad():
                for rnn in self.rnns:
                    for name, weight in rnn.named_parameters():
                        if name.startswith("weight_ih"):
                            weight.uniform_(-weight.shape[1] ** -0.5, weight.shape[1] ** -0.5)
        # Batch norm on each recurrent layer's input; the first layer's (``input_norm``) centres the
        # clipped-ReLU output of the convolutions (mean about 0.4, deviation 0.6 on AN4), without which
        # the presets' rate stalled one AN4 initialisation in three (docs/results/an4-frontier/notes.md).
        self.input_norm = SequenceBatchNorm(sizes[0]) if config.input_norm else None
        self.norms = nn.ModuleList(SequenceBatchNorm(config.hidden_size) for _ in range(config.layers - 1))
        self.directions = directions
        self.dropout = nn.Dropout(config.dropout)
        self.output_norm = SequenceBatchNorm(config.hidden_size)
        self.fc = nn.Linear(config.hidden_size, alphabet_size)

    def output_lengths(self, lengths):
        """Output frames for input frames (a tensor or an int), through the strided convolutions."""
        for conv in self.config.conv:
            lengths = conv_output_size(lengths, conv.kernel[1], conv.stride[1])
        return lengths

    def _recurrent(self, rnn: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if isinstance(rnn, ClippedReLURNN):
            out = rnn(x, lengths)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
            out, _ = rnn(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, total_length=x.shape[0])
        if self.directions == 2:  # sum the directions
            out = out[..., :self.config.hidden_size] + out[..., self.config.hidden_size:]
        return out

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, bins, frames) and their lengths -> log-probabilities (T', B, alphabet) and T'."""
        x = features.unsqueeze(1)  # (B, 1, bins, T)
        for i, conv in enumerate(self.config.conv):
            # Zero each layer's output past each utterance's length, so that the next layer sees
            # zeros there, as it would alone (Conv2d pads with zeros): padding changes no output.
            x = self.conv[3 * i:3 * i + 3](x)
            lengths = conv_output_size(lengths, conv.kernel[1], conv.stride[1])
            valid = torch.arange(x.shape[-1], device=x.device)[None] < lengths.to(x.device)[:, None]
            x = x * valid[:, None, None]
        x = x.flatten(1, 2).permute(2, 0, 1)  # (T', B, C * bins')
        lengths = lengths.clamp(min=1)
        mask = torch.arange(x.shape[0], device=x.device)[:, None] < lengths.to(x.device)[None]  # (T', B)
        if self.input_norm is not None:
            x = self.input_norm(x, mask)
        for i, rnn in enumerate(self.rnns):
            if i > 0:
                x = self.norms[i - 1](x, mask)
            x = self.dropout(self._recurrent(rnn, x, lengths))  # (T', B, H)
        logits = self.fc(self.output_norm(x, mask))  # (T', B, alphabet)
        return logits.log_softmax(dim=-1), lengths

