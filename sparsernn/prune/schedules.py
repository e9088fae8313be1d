"""Pruning schedules: pure functions of the training step, and the small frozen objects the Pruner uses.

A schedule says *when* masks change and *how far* (a magnitude threshold or a target sparsity); which
weights it removes is the criterion's business (``masks.py``) and applying masks is the Pruner's.

Step convention: ``step`` counts optimizer steps taken so far. ``Pruner.step()`` is called after the
optimizer step number ``step`` (1, 2, ...), and the value a function returns for ``step`` is the one in
force after the mask update of that step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_window(start: int, end: int, freq: int, ramp: int | None = None) -> None:
    _check_int("start", start, 0)
    _check_int("end", end, 0)
    _check_int("freq", freq, 1)
    if end <= start:
        raise ValueError(f"end must be > start ({start}), got {end}")
    if ramp is not None:
        _check_int("ramp", ramp, 0)
        if not start <= ramp <= end:
            raise ValueError(f"ramp must lie in [start, end] = [{start}, {end}], got {ramp}")


def _check_sparsity(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")


def _check_nonnegative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _last_narang_update(step: int, start: int, end: int, freq: int) -> int | None:
    """The last step u <= step with u % freq == 0 and start < u < end, or None."""
    last = (min(step, end - 1) // freq) * freq
    return last if last > start else None


def narang_threshold(step: int, *, start: int, ramp: int, end: int, freq: int, theta: float,
                     phi: float) -> float:
    """Magnitude threshold in force after the mask update at ``step`` (Narang et al. 2017, Section 3).

    Masks are recomputed at steps ``itr`` with ``itr % freq == 0`` and ``start < itr < end``; with
    S = start, R = ramp, E = end, f = freq::

        S <  itr < R:  eps = theta * (itr - S + 1) / f
        R <= itr < E:  eps = (theta * (R - S + 1) + phi * (itr - R + 1)) / f

    Between updates the last value stays in force: 0.0 before the first update, and the value of
    the last update before ``end`` from then on.
    """
    _check_int("step", step, 0)
    _check_window(start, end, freq, ramp)
    _check_nonnegative("theta", theta)
    _check_nonnegative("phi", phi)
    itr = _last_narang_update(step, start, end, freq)
    if itr is None:
        return 0.0
    if itr < ramp:
        return theta * (itr - start + 1) / freq
    return (theta * (ramp - start + 1) + phi * (itr - ramp + 1)) / freq


def narang_slopes(q: float, *, start: int, ramp: int, end: int, freq: int,
                  ramp_ratio: float = 1.5) -> tuple[float, float]:
    """Start slope theta and ramp slope phi from the paper's Equation 1 (Narang et al. 2017)::

        theta = 2 * q * f / (2 * (R - S) + 3 * (E - R)),   phi = ramp_ratio * theta

    ``q`` is the magnitude the final threshold should reach: the paper takes the 90th percentile of
    |w| of a trained dense model. With ``ramp_ratio = 1.5`` the final threshold is about ``q``.
    """
    _check_nonnegative("q", q)
    _check_window(start, end, freq, ramp)
    _check_nonnegative("ramp_ratio", ramp_ratio)
    theta = 2.0 * q * freq / (2.0 * (ramp - start) + 3.0 * (end - ramp))
    return theta, ramp_ratio * theta


def agp_sparsity(step: int, *, initial: float, final: float, start: int, end: int,
                 freq: int) -> float:
    """Target sparsity of automated gradual pruning (Zhu & Gupta 2017, Equation 1)::

        s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3,   t in {t0, t0 + dt, ...}

    with t0 = start, dt = freq and n * dt = end - start. Updates happen at ``start + k * freq``;
    ``initial`` is in force before ``start`` and ``final`` from ``end`` on.
    """
    _check_int("step", step, 0)
    _check_window(start, end, freq)
    _check_sparsity("initial", initial)
    _check_sparsity("final", final)
    if initial > final:
        raise ValueError(f"initial must be <= final ({final}), got {initial}")
    if step < start:
        return float(initial)
    if step >= end:
        return float(final)
    t = start + ((step - start) // freq) * freq
    return final + (initial - final) * (1.0 - (t - start) / (end - start)) ** 3


def oneshot_sparsity(step: int, *, sparsity: float, at: int) -> float:
    """Hard pruning: 0 before step ``at``, ``sparsity`` from ``at`` on (one mask update, then fixed)."""
    _check_int("step", step, 0)
    _check_int("at", at, 1)
    _check_sparsity("sparsity", sparsity)
    return float(sparsity) if step >= at else 0.0


def paper_steps(epochs: int, steps_per_epoch: int) -> dict[str, int]:
    """Table 1 heuristics of Narang et al. 2017 as step numbers.

    start = the start of the 2nd epoch, ramp = the start of the epoch at 25% of training, end = the
    start of the epoch at 50% of training, freq = 100.
    """
    _check_int("epochs", epochs, 4)
    _check_int("steps_per_epoch", steps_per_epoch, 1)
    start = steps_per_epoch
    ramp = max(start, (epochs // 4) * steps_per_epoch)
    end = (epochs // 2) * steps_per_epoch
    return {"start": start, "ramp": ramp, "end": end, "freq": 100}


class Schedule(Protocol):
    """What the Pruner asks of any schedule."""

    def is_update_step(self, step: int) -> bool:
        """Whether masks are recomputed after optimizer step ``step``."""
        ...


@dataclass(frozen=True)
class NoSchedule:
    """Explicitly no pruning: masks stay all ones (the dense baseline)."""

    def is_update_step(self, step: int) -> bool:
        return False


@dataclass(frozen=True)
class NarangSchedule:
    """Gradual threshold pruning of Narang et al. 2017 (see :func:`narang_threshold`).

    Give either the paper's ``theta`` and ``phi`` (absolute magnitudes), or a target ``sparsity``:
    then q, the ``sparsity``-quantile of |w|, is measured per tensor (``q_scope="tensor"``; per gate
    block with ``Pruner(per_gate=True)``) or per group (``"group"``), and the slopes are scaled so
    that the final threshold equals q exactly (Equation 1 solved for the discrete staircase,
    phi = ramp_ratio * theta).

    ``q_from="update"`` (the default) measures q again from the current weights at every mask
    update (pruned weights counted as zeros): the threshold keeps the paper's staircase shape
    relative to the current weights, and the last update prunes to the target. ``q_from="start"``
    (the paper's variant) measures q once, from the weights at ``start`` or from a dense state_dict
    given to the Pruner; weights keep growing in training, so the sparsity reached can fall short of
    the target (``Pruner.report()`` shows it).
    """

    start: int
    ramp: int
    end: int
    freq: int = 100
    theta: float | None = None
    phi: float | None = None
    sparsity: float | None = None
    ramp_ratio: float = 1.5
    q_scope: Literal["tensor", "group"] = "tensor"
    q_from: Literal["start", "update"] = "update"

    def __post_init__(self) -> None:
        _check_window(self.start, self.end, self.freq, self.ramp)
        explicit = self.theta is not None or self.phi is not None
        if explicit == (self.sparsity is not None):
            raise ValueError("give either theta and phi, or sparsity (not both, not neither)")
        if explicit:
            if self.theta is None or self.phi is None:
                raise ValueError("theta and phi must be given together")
            _check_nonnegative("theta", self.theta)
            _check_nonnegative("phi", self.phi)
        else:
            _check_sparsity("sparsity", self.sparsity)
        _check_nonnegative("ramp_ratio", self.ramp_ratio)
        if self.q_scope not in ("tensor", "group"):
            raise ValueError(f"q_scope must be 'tensor' or 'group', got {self.q_scope!r}")
        if self.q_from not in ("start", "update"):
            raise ValueError(f"q_from must be 'start' or 'update', got {self.q_from!r}")
        if _last_narang_update(self.end, self.start, self.end, self.freq) is None:
            raise ValueError(f"no step in ({self.start}, {self.end}) is a multiple of freq "
                             f"({self.freq}): the schedule would never prune")

    @classmethod
    def from_epochs(cls, epochs: int, steps_per_epoch: int, **kwargs) -> NarangSchedule:
        """The paper's Table 1 defaults (:func:`paper_steps`); other fields as keywords."""
        return cls(**{**paper_steps(epochs, steps_per_epoch), **kwargs})

    @property
    def target_mode(self) -> bool:
        return self.sparsity is not None

    def is_update_step(self, step: int) -> bool:
        return step % self.freq == 0 and self.start < step < self.end

    def threshold(self, step: int, q: float = 1.0) -> float:
        """Threshold after step ``step``; in target mode, for a tensor whose q is ``q``."""
        window = dict(start=self.start, ramp=self.ramp, end=self.end, freq=self.freq)
        if not self.target_mode:
            return narang_threshold(step, theta=self.theta, phi=self.phi, **window)
        unit = dict(theta=1.0, phi=self.ramp_ratio, **window)
        return q * narang_threshold(step, **unit) / narang_threshold(self.end, **unit)


@dataclass(frozen=True)
class AGPSchedule:
    """Automated gradual pruning to ``sparsity`` (Zhu & Gupta 2017, see :func:`agp_sparsity`);
    each update keeps the largest magnitudes of each tensor (or gate block)."""

    start: int
    end: int
    freq: int = 100
    sparsity: float = 0.9
    initial: float = 0.0

    def __post_init__(self) -> None:
        agp_sparsity(0, initial=self.initial, final=self.sparsity, start=self.start, end=self.end,
                     freq=self.freq)  # validates every argument

    def is_update_step(self, step: int) -> bool:
        on_grid = self.start <= step < self.end and (step - self.start) % self.freq == 0
        return on_grid or step == self.end

    def target(self, step: int) -> float:
        return agp_sparsity(step, initial=self.initial, final=self.sparsity, start=self.start,
                            end=self.end, freq=self.freq)


@dataclass(frozen=True)
class OneShotSchedule:
    """Hard pruning: at step ``at`` keep the largest (1 - sparsity) magnitudes, then fix the mask."""

    at: int
    sparsity: float = 0.9

    def __post_init__(self) -> None:
        oneshot_sparsity(0, sparsity=self.sparsity, at=self.at)  # validates

    def is_update_step(self, step: int) -> bool:
        return step == self.at

    def target(self, step: int) -> float:
        return oneshot_sparsity(step, sparsity=self.sparsity, at=self.at)


SCHEDULES = {"none": NoSchedule, "narang": NarangSchedule, "agp": AGPSchedule,
             "oneshot": OneShotSchedule}


def make_schedule(method: str, **kwargs) -> Schedule:
    """Build a schedule by name (the registry configs use); unknown names list the valid ones."""
    if method not in SCHEDULES:
        raise ValueError(f"unknown pruning method {method!r}; valid: {', '.join(SCHEDULES)}")
    return SCHEDULES[method](**kwargs)
