"""The Pruner: schedule + criterion + masks, stepped once per optimizer step."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sparsernn.prune.masks import (
    GROUPS,
    PrunableWeight,
    find_prunable,
    magnitude_quantile,
    threshold_keep,
    topk_keep,
)
from sparsernn.prune.schedules import NarangSchedule, NoSchedule, Schedule

STATE_FORMAT = 1
DEFAULT_GROUPS = ("recurrent", "linear")


@dataclass(frozen=True)
class ReportRow:
    """One prunable tensor: its size, what is left of it, and the threshold last applied."""

    name: str
    group: str
    shape: tuple[int, ...]
    nonzeros: int
    numel: int
    sparsity: float
    threshold: float | tuple[float, ...]  # one per gate block with per_gate


def _mask_gradient(mask: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return grad * mask


class Pruner:
    """Prunes a model's weights during its ordinary training run.

    ``schedule`` is one schedule for the recurrent and linear weights, or a mapping from group
    (``"recurrent"``, ``"linear"``, ``"embedding"``, ``"conv"``) to that group's schedule: groups
    not named are left alone (so embeddings and convolutions stay dense unless asked for).

    Call :meth:`step` after every ``optimizer.step()``. It applies the masks in place, recomputes
    them on the schedule's update steps (masks only shrink), and zeroes the optimizer's state at
    pruned positions (SGD momentum, Adam moments, any state tensor shaped like the weight).
    Gradient hooks zero the gradient at pruned positions during ``backward`` (before clipping,
    before DDP's all-reduce), so no optimizer can move a pruned weight.

    Under DDP every rank computes the same masks without communication: DDP keeps the parameters
    bitwise identical on all ranks (broadcast at construction, all-reduced gradients, the same
    optimizer arithmetic), the schedule is a pure function of the step, and the criteria
    (comparison, ``kthvalue``, ``topk``) are deterministic functions of the weights.

    ``per_gate`` gives each gate block of a fused LSTM/GRU weight its own threshold (target-mode q,
    or top-k). ``dense_state_dict`` supplies the weights that target-mode Narang schedules take q
    from (the paper's "previously trained dense model", with ``q_from="start"``); otherwise q comes
    from the current weights at every mask update (``q_from="update"``, the default: the target is
    reached) or from the weights at the schedule's ``start`` (``q_from="start"``).

    ``block=(r, c)`` prunes whole r x c blocks by their largest magnitude (block-sparse RNNs, Narang,
    Undersander and Diamos 2017) with any schedule: thresholds, q and top-k counts then apply to
    block scores, so sparsity targets are met in whole blocks. (8, 1) suits the compiled kernels.
    """

    def __init__(self, model: nn.Module, schedule: Schedule | Mapping[str, Schedule],
                 optimizer: torch.optim.Optimizer | None = None, *, include: Sequence[str] = (),
                 exclude: Sequence[str] = (), per_gate: bool = False, block: tuple[int, int] = (1, 1),
                 dense_state_dict: Mapping[str, torch.Tensor] | None = None,
                 mask_gradients: bool = True) -> None:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module  # names and state match the plain model's
        if isinstance(schedule, Mapping):
            self.schedules = dict(schedule)
        else:
            self.schedules = dict.fromkeys(DEFAULT_GROUPS, schedule)
        unknown = set(self.schedules) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown group(s) {sorted(unknown)}; valid: {', '.join(GROUPS)}")
        self.optimizer = optimizer
        self.weights = find_prunable(model, self.schedules, include=include, exclude=exclude,
                                     per_gate=per_gate, block=tuple(block))
        if not self.weights:
            raise ValueError(f"no prunable weights in {type(model).__name__} for groups "
                             f"{sorted(self.schedules)} (include={list(include)}, "
                             f"exclude={list(exclude)})")
        self._target_groups = [g for g, s in self.schedules.items()
                               if isinstance(s, NarangSchedule) and s.target_mode]
        self._step = 0
        self._q: dict[str, torch.Tensor] = {}  # target-mode Narang: per-block q
        self._thresholds = {w.name: torch.zeros(w.blocks) for w in self.weights}
        self._hooks = []
        if mask_gradients:
            self._hooks = [w.param.register_hook(functools.partial(_mask_gradient, w.mask))
                           for w in self.weights if w.param.requires_grad]
        if dense_state_dict is not None:
            for group in self._target_groups:
                if self.schedules[group].q_from == "update":
                    raise ValueError(f"dense_state_dict sets q once, but the {group} schedule has "
                                     "q_from='update'; use q_from='start'")
                missing = [w.name for w in self._group(group) if w.name not in dense_state_dict]
                if missing:
                    raise ValueError(f"dense_state_dict has no {', '.join(missing)}")
                self._calibrate(group, lambda w: dense_state_dict[w.name])

    # -- the training-step interface ---------------------------------------------------------

    @torch.no_grad()
    def step(self) -> None:
        """Advance one optimizer step: update masks when the schedule says so, then apply them."""
        self._step += 1
        changed = False
        for group, schedule in self.schedules.items():
            update = schedule.is_update_step(self._step)
            if group in self._target_groups and schedule.start <= self._step:
                uncalibrated = any(w.name not in self._q for w in self._group(group))
                if uncalibrated or (update and schedule.q_from == "update"):
                    self._calibrate(group, lambda w: w.param)
            if update:
                self._update(group, schedule)
                changed = True
        for w in self.weights:
            w.param.mul_(w.mask)
        if changed or not self._hooks:
            self._mask_optimizer_state()

    @property
    def current_step(self) -> int:
        """Optimizer steps taken so far (as counted by :meth:`step`)."""
        return self._step

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return {w.name: w.mask for w in self.weights}

    def sparsity(self, group: str | None = None) -> float:
        """Fraction of zeros over all prunable weights (of one group, if given)."""
        weights = self.weights if group is None else self._group(group)
        zeros = sum(int(w.param.numel() - torch.count_nonzero(w.param)) for w in weights)
        return zeros / max(1, sum(w.param.numel() for w in weights))

    def thresholds(self) -> dict[str, float]:
        """Largest threshold last applied in each group (0.0 before its first update)."""
        return {group: max(float(self._thresholds[w.name].max()) for w in self._group(group))
                for group in self.schedules if self._group(group)}

    def report(self) -> list[ReportRow]:
        """One row per prunable tensor."""
        rows = []
        for w in self.weights:
            nonzeros = int(torch.count_nonzero(w.param))
            thresholds = tuple(float(t) for t in self._thresholds[w.name])
            rows.append(ReportRow(
                name=w.name, group=w.group, shape=tuple(w.param.shape), nonzeros=nonzeros,
                numel=w.param.numel(), sparsity=1.0 - nonzeros / w.param.numel(),
                threshold=thresholds[0] if len(thresholds) == 1 else thresholds))
        return rows

    def remove(self) -> None:
        """Detach the gradient hooks (masks stay applied to the weights)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # -- checkpointing -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain data: masks (bool), the step, per-block q and thresholds, the schedules."""
        return {
            "format": STATE_FORMAT,
            "step": self._step,
            "schedules": self._describe_schedules(),
            "block": list(self.weights[0].block),
            "masks": {w.name: w.mask.detach().bool().cpu() for w in self.weights},
            "q": {name: q.clone() for name, q in self._q.items()},
            "thresholds": {name: t.clone() for name, t in self._thresholds.items()},
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping) -> None:
        """Restore masks and the schedule position; applies the masks to the current weights."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"pruner state has format {state.get('format')!r}, "
                             f"this version reads {STATE_FORMAT}")
        if state["schedules"] != self._describe_schedules():
            raise ValueError(f"pruner state was saved with schedules {state['schedules']}, "
                             f"this pruner has {self._describe_schedules()}")
        block = list(self.weights[0].block)
        if state.get("block", [1, 1]) != block:
            raise ValueError(f"pruner state was saved with block {state.get('block')}, "
                             f"this pruner has {block}")
        names = [w.name for w in self.weights]
        if sorted(state["masks"]) != sorted(names):
            raise ValueError(f"pruner state holds masks for {sorted(state['masks'])}, "
                             f"this pruner prunes {sorted(names)}")
        for w in self.weights:
            mask = state["masks"][w.name]
            if tuple(mask.shape) != tuple(w.mask.shape):
                raise ValueError(f"mask {w.name} has shape {tuple(mask.shape)}, "
                                 f"the weight has {tuple(w.mask.shape)}")
            w.mask.copy_(mask)  # in place: the gradient hooks hold this tensor
            w.param.mul_(w.mask)
        self._step = int(state["step"])
        self._q = {name: q.clone() for name, q in state["q"].items()}
        self._thresholds = {name: t.clone() for name, t in state["thresholds"].items()}

    # -- internals ---------------------------------------------------------------------------

    def _group(self, group: str) -> list[PrunableWeight]:
        return [w for w in self.weights if w.group == group]

    def _describe_schedules(self) -> dict[str, dict]:
        return {g: {"type": type(s).__name__, **dataclasses.asdict(s)}
                for g, s in self.schedules.items()}

    def _calibrate(self, group: str, source) -> None:
        """Measure q, the target-sparsity quantile of |w|, per block or over the whole group."""
        schedule = self.schedules[group]
        weights = self._group(group)
        magnitudes = {w.name: w.scores(source(w).float().reshape(w.mask.shape)) for w in weights}
        if schedule.q_scope == "group":
            pooled = torch.cat([m.reshape(1, -1) for m in magnitudes.values()], dim=1)
            q = magnitude_quantile(pooled, schedule.sparsity).cpu()
            self._q.update({w.name: q.expand(w.blocks).clone() for w in weights})
        else:
            self._q.update({name: magnitude_quantile(m, schedule.sparsity).cpu()
                            for name, m in magnitudes.items()})

    def _update(self, group: str, schedule: Schedule) -> None:
        for w in self._group(group):
            if isinstance(schedule, NoSchedule):
                continue
            if isinstance(schedule, NarangSchedule):
                value = schedule.threshold(self._step, self._q.get(w.name, 1.0))
                thresholds = torch.as_tensor(value, dtype=torch.float32).expand(w.blocks)
                scores = w.scores(w.param)
                keep = threshold_keep(scores, thresholds.to(scores.device, scores.dtype))
            else:
                keep, thresholds = topk_keep(w.scores(w.param), w.scores(w.mask),
                                             schedule.target(self._step))
            w.mask.mul_(w.expand(keep))
            self._thresholds[w.name] = thresholds.detach().float().cpu().reshape(w.blocks)

    def _mask_optimizer_state(self) -> None:
        if self.optimizer is None:
            return
        for w in self.weights:
            for value in self.optimizer.state.get(w.param, {}).values():
                if torch.is_tensor(value) and value.shape == w.param.shape:
                    value.mul_(w.mask)
