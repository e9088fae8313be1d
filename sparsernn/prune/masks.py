"""Which weights are prunable, how they are grouped, and the magnitude criteria that shrink masks.

Masks are explicit tensors of 0s and 1s with the weight's shape, dtype and device (multiplying by a
mask of the weight's own dtype is much faster on a CPU than by a bool mask). They are applied in place,
never through parametrizations or forward hooks, so cuDNN's flattened ``nn.LSTM``/``nn.GRU`` weights
keep working.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

#: Layer-type groups, each with its own schedule and hyper-parameters (as in the paper).
GROUPS = ("recurrent", "linear", "embedding", "conv")

# Gate blocks stacked along dim 0 of fused recurrent weights (PyTorch's layout: LSTM i|f|g|o, GRU r|z|n).
_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1, nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}


def module_group(module: nn.Module) -> str | None:
    """The group of a module whose ``weight*`` parameters are prunable, or None."""
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        return "recurrent"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    return None


def gate_count(module: nn.Module, param_name: str) -> int:
    """Number of gate blocks stacked in a recurrent weight (1 for projections and other layers)."""
    if param_name.startswith("weight_hr"):  # LSTM projection: not gated
        return 1
    return next((n for kind, n in _GATES.items() if isinstance(module, kind)), 1)


@dataclass
class PrunableWeight:
    """One prunable weight tensor and its mask."""

    name: str  # full parameter name, e.g. "rnn.weight_hh_l0_reverse"
    group: str
    param: nn.Parameter
    mask: torch.Tensor  # 0/1, same shape, dtype and device as param
    blocks: int  # independent row blocks (gate blocks with per_gate, else 1)
    block: tuple[int, int] = (1, 1)  # pruning unit: r rows x c columns, removed together

    def scores(self, tensor: torch.Tensor) -> torch.Tensor:
        """Magnitude of each pruning unit as (blocks, units per block): |w|, or with an r x c
        ``block`` the largest |w| in it (Narang, Undersander and Diamos 2017)."""
        magnitude = tensor.detach().abs().reshape(self.mask.shape[0], -1)  # (rows, cols)
        r, c = self.block
        if (r, c) != (1, 1):
            rows, cols = magnitude.shape
            magnitude = magnitude.reshape(rows // r, r, cols // c, c).amax(dim=(1, 3))
        return magnitude.reshape(self.blocks, -1)

    def expand(self, keep: torch.Tensor) -> torch.Tensor:
        """A (blocks, units per block) keep matrix as a mask of the weight's shape."""
        r, c = self.block
        keep = keep.reshape(self.mask.shape[0] // r, -1)
        if (r, c) != (1, 1):
            keep = keep.repeat_interleave(r, dim=0).repeat_interleave(c, dim=1)
        return keep.reshape(self.mask.shape)


def find_prunable(model: nn.Module, groups: Iterable[str], *, include: Sequence[str] = (),
                  exclude: Sequence[str] = (), per_gate: bool = False,
                  block: tuple[int, int] = (1, 1)) -> list[PrunableWeight]:
    """Prunable weights of ``model`` in the given groups, in module order.

    Recurrent: every ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``weight_hr_l{k}`` (and ``_reverse``)
    of ``nn.RNN``/``nn.GRU``/``nn.LSTM`` and ``weight_ih``/``weight_hh`` of the cells; linear,
    embedding and conv: their ``weight``. Never biases or normalization parameters. ``include``
    and ``exclude`` are shell-style patterns on the full name (``"decoder.*"``); a shared (tied)
    parameter is listed once, under its first name. With an r x c ``block`` every weight's rows
    (within each gate, with ``per_gate``) must be a multiple of r and its columns of c.
    """
    groups = set(groups)
    unknown = groups - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown group(s) {sorted(unknown)}; valid: {', '.join(GROUPS)}")
    found, seen = [], set()
    for module_name, module in model.named_modules():
        group = module_group(module)
        if group not in groups:
            continue
        for param_name, param in module.named_parameters(recurse=False):
            if not param_name.startswith("weight") or id(param) in seen:
                continue
            name = f"{module_name}.{param_name}" if module_name else param_name
            if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
                continue
            if any(fnmatch.fnmatchcase(name, p) for p in exclude):
                continue
            seen.add(id(param))
            blocks = gate_count(module, param_name) if per_gate else 1
            rows, cols = param.shape[0], param[0].numel()
            if rows % (block[0] * blocks) or cols % block[1]:
                gates = f" in {blocks} gate blocks" if blocks > 1 else ""
                raise ValueError(f"block {block[0]}x{block[1]} does not tile {name} of shape "
                                 f"{tuple(param.shape)}{gates}")
            mask = torch.ones_like(param, memory_format=torch.contiguous_format).detach()
            found.append(PrunableWeight(name, group, param, mask, blocks, block))
    return found


def magnitude_quantile(magnitudes: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per row of ``magnitudes`` (rows, n): the k-th smallest value, k = ceil(sparsity * n).

    Removing every value <= this one removes a ``sparsity`` fraction of the row (more on ties).
    """
    k = max(1, math.ceil(sparsity * magnitudes.shape[1]))
    return magnitudes.kthvalue(k, dim=1).values


def threshold_keep(weight: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Keep where |w| > threshold; ``weight`` (or block scores) is (blocks, n), ``thresholds`` (blocks,)."""
    return (weight.abs() > thresholds[:, None]).to(weight.dtype)


def topk_keep(weight: torch.Tensor, mask: torch.Tensor,
              sparsity: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the largest (1 - sparsity) magnitudes of each row, removing exactly round(sparsity * n).

    Already-pruned entries go first, so a mask only shrinks. Returns the keep mask (rows, n) and, per
    row, the largest magnitude removed (the effective threshold; 0 when nothing is removed).
    """
    rows, n = weight.shape
    k = round(sparsity * n)
    keep = torch.ones_like(weight)
    if k == 0:
        return keep, weight.new_zeros(rows)
    score = torch.where(mask > 0, weight.abs(), torch.full_like(weight, -1.0))
    removed = torch.topk(score, k, dim=1, largest=False)
    keep.scatter_(1, removed.indices, 0.0)
    return keep, removed.values.amax(dim=1).clamp(min=0.0)
