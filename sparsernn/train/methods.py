"""What each ``prune.method`` changes in the one loop: the schedule, the model's size, the teacher.

dense / narang / agp / oneshot differ only in the pruning schedule; small_dense is a dense model
sized to a number of non-zero parameters; distill trains a (possibly sized) dense student on a
teacher's soft outputs as well as the targets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from sparsernn.checkpoint import load_checkpoint
from sparsernn.config import ConfigError, ModelConfig, PruneConfig, RunConfig
from sparsernn.models import closest_hidden_size, parameter_count, scaled_shape
from sparsernn.models.lm import nonzero_parameters
from sparsernn.prune import AGPSchedule, NarangSchedule, NoSchedule, OneShotSchedule, Schedule, paper_steps


def prune_schedule(config: PruneConfig, epochs: int, steps_per_epoch: int) -> Schedule:
    """The schedule a prune config asks for; the window defaults to the paper's Table 1."""
    if config.method in ("dense", "small_dense", "distill"):
        return NoSchedule()
    if config.method == "oneshot" and config.at is not None:  # needs no window
        return OneShotSchedule(at=config.at, sparsity=config.sparsity)
    if config.start is None or config.end is None:
        try:
            defaults = paper_steps(epochs, steps_per_epoch)
        except ValueError:
            raise ConfigError("prune.start and prune.end: give them, or train for at least 4 epochs "
                              "to take the paper's Table 1 defaults") from None
    else:
        defaults = {}
    start = config.start if config.start is not None else defaults["start"]
    end = config.end if config.end is not None else defaults["end"]
    try:
        if config.method == "narang":
            ramp = config.ramp if config.ramp is not None else defaults.get("ramp", (start + end) // 2)
            return NarangSchedule(start=start, ramp=ramp, end=end, freq=config.freq,
                                  sparsity=config.sparsity, q_scope=config.q_scope, q_from=config.q_from)
        if config.method == "agp":
            return AGPSchedule(start=start, end=end, freq=config.freq, sparsity=config.sparsity)
        return OneShotSchedule(at=config.at if config.at is not None else max(1, start),
                               sparsity=config.sparsity)
    except ValueError as error:
        raise ConfigError(f"prune: {error}") from None


def masks_final_from(schedule: Schedule) -> int:
    """The first step after which the schedule changes no mask."""
    if isinstance(schedule, (NarangSchedule, AGPSchedule)):
        return schedule.end
    if isinstance(schedule, OneShotSchedule):
        return schedule.at
    return 0


@dataclass(frozen=True)
class Sizing:
    """How a small dense model's hidden size was chosen (printed and saved as sizing.json)."""

    target_nonzeros: int
    source: str
    hidden_size: int
    embedding_size: int | None  # language models scale it with the hidden size
    parameters: int
    parameters_one_size_up: int  # hidden_size + 1 (embedding scaled with it)

    def explain(self) -> str:
        return (f"sizing: target {self.target_nonzeros:,} non-zero parameters ({self.source}); "
                f"hidden_size {self.hidden_size} gives {self.parameters:,} parameters "
                f"({self.parameters / self.target_nonzeros:.1%} of the target), "
                f"hidden_size {self.hidden_size + 1} would give {self.parameters_one_size_up:,}")


def model_shape(config: RunConfig, vocab_size: int) -> tuple[ModelConfig, Sizing | None]:
    """The model config to build: as given, or sized to match a non-zero count."""
    prune = config.prune
    if prune.match_nonzeros is None and prune.match_checkpoint is None:
        return config.model, None
    if prune.match_nonzeros is not None:
        target, source = prune.match_nonzeros, "prune.match_nonzeros"
    else:
        target = nonzero_parameters(load_checkpoint(prune.match_checkpoint)["model"])
        source = f"non-zeros of {prune.match_checkpoint}"

    def count(hidden: int) -> int:
        return parameter_count(config, scaled_shape(config.model, hidden), vocab_size)

    model = scaled_shape(config.model, closest_hidden_size(count, target))
    hidden = model.hidden_size  # (a translation model's is rounded up to even)
    return model, Sizing(target, source, hidden, getattr(model, "embedding_size", None), count(hidden),
                         count(hidden + 1))


def save_sizing(sizing: Sizing, out_dir: Path) -> None:
    (out_dir / "sizing.json").write_text(json.dumps(asdict(sizing), indent=2) + "\n")


def load_teacher(config: RunConfig, vocabulary: tuple[str, ...]) -> nn.Module | None:
    """The frozen teacher of a distill run, or None."""
    if config.prune.teacher is None:
        return None
    from sparsernn.train.evaluate import load_trained

    path = config.prune.teacher
    teacher, teacher_config, teacher_vocabulary, _ = load_trained(path)
    if teacher_vocabulary != list(vocabulary):
        raise ConfigError(f"{path}: the teacher was trained on a different vocabulary")
    if teacher_config.data.kind != config.data.kind:
        raise ConfigError(f"{path}: the teacher was trained on {teacher_config.data.kind} data, "
                          f"not {config.data.kind}")
    if config.speech and (teacher_config.model.conv != config.model.conv
                          or teacher_config.data.features != config.data.features
                          or teacher_config.data.n_mels != config.data.n_mels):
        raise ConfigError(f"{path}: the teacher's features or convolutions differ from the "
                          "student's, so their CTC frames do not line up")
    teacher.requires_grad_(False)
    return teacher
