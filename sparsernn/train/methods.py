"""What each ``prune.method`` changes in the one loop: the schedule, the model's size, the teacher.

dense / narang / agp / oneshot differ only in the pruning schedule; small_dense is a dense model
sized to a number of non-zero parameters; distill trains a (possibly sized) dense student on a
teacher's soft outputs as well as the targets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sparsernn.checkpoint import load_checkpoint
from sparsernn.config import ConfigError, ModelConfig, PruneConfig, RunConfig
from sparsernn.models.lm import (
    LanguageModel,
    nonzero_parameters,
    parameter_count,
    scaled_shape,
    size_to_parameters,
)
from sparsernn.prune import AGPSchedule, NarangSchedule, NoSchedule, OneShotSchedule, Schedule, paper_steps


def prune_schedule(config: PruneConfig, epochs: int, steps_per_epoch: int) -> Schedule:
    """The schedule a prune config asks for; the window defaults to the paper's Table 1."""
    if config.method in ("dense", "small_dense", "distill"):
        return NoSchedule()
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
    embedding_size: int
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
    model, parameters = size_to_parameters(vocab_size, config.model, target)
    one_up = scaled_shape(config.model, model.hidden_size + 1)
    return model, Sizing(target, source, model.hidden_size, model.embedding_size, parameters,
                         parameter_count(vocab_size, one_up))


def save_sizing(sizing: Sizing, out_dir: Path) -> None:
    (out_dir / "sizing.json").write_text(json.dumps(asdict(sizing), indent=2) + "\n")


def load_teacher(config: PruneConfig, vocabulary: tuple[str, ...]) -> LanguageModel | None:
    """The frozen teacher of a distill run, or None."""
    if config.teacher is None:
        return None
    checkpoint = load_checkpoint(config.teacher)
    if checkpoint.get("vocabulary") != list(vocabulary):
        raise ConfigError(f"{config.teacher}: the teacher was trained on a different vocabulary")
    teacher_config = RunConfig.model_validate(checkpoint["config"])
    teacher = LanguageModel(len(vocabulary), teacher_config.model)
    teacher.load_state_dict(checkpoint["model"])
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher
