"""The one training loop: batch -> forward -> loss -> backward -> clip -> optimizer.step() ->
pruner.step() -> log -> evaluate / checkpoint. Every method is a configuration of it
(``methods.py``), for language models and CTC speech models alike (``tasks.py`` holds what differs:
data, batches, loss, validation metrics); under ``torchrun`` it runs as DDP (``distributed.py``).

Run directory: ``config.yaml`` (resolved config), ``metrics.jsonl`` (one JSON object per logging
step and per evaluation), ``checkpoints/last.pt`` and ``checkpoints/best.pt``, and ``sizing.json``
for models sized to a parameter count.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from sparsernn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sparsernn.config import ConfigError, RunConfig, config_to_dict, dump_config
from sparsernn.models import build_model
from sparsernn.models.lm import detach
from sparsernn.prune import Pruner
from sparsernn.train import distributed
from sparsernn.train.methods import load_teacher, masks_final_from, model_shape, prune_schedule, save_sizing
from sparsernn.train.tasks import make_task


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class LoopState:
    """Where the loop stands: enough, with the per-rank state, to resume exactly."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # next batch (BPTT window or utterance batch) within the epoch
    best_valid_loss: float = math.inf  # for the learning-rate plateau
    best_checkpoint_loss: float = math.inf  # of best.pt (its selection value), once masks are final
    evaluations_without_improvement: int = 0
    train_seconds: float = 0.0  # wall time spent in training steps, summed over resumes
    skipped: int = 0  # utterances left out of training steps for a non-finite CTC loss (rank 0's count)


def make_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    train = config.train
    if train.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                               weight_decay=train.weight_decay)
    kind = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return kind(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)


def _append_metrics(path: Path, record: dict) -> None:
    with path.open("a") as file:
        file.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> list[dict]:
    """Drop records written after the checkpoint we resume from; returns the records kept."""
    if not path.exists():
        return []
    kept = [record for record in map(json.loads, path.read_text().splitlines()) if record["step"] <= step]
    path.write_text("".join(json.dumps(record) + "\n" for record in kept))
    return kept


def _resumable(config: dict) -> dict:
    """The config fields a resumed run must share (it may raise train.max_steps), with the defaults of
    fields added since the checkpoint was written filled in."""
    config = config_to_dict(RunConfig.model_validate(config))
    return {**config, "train": {k: v for k, v in config["train"].items() if k != "max_steps"}}


def _to(carry: dict, device) -> dict:
    """A task's carried state (hidden states or nothing) detached and on ``device``."""
    def move(hidden):
        return tuple(h.to(device) for h in hidden) if isinstance(hidden, tuple) else hidden.to(device)
    return {key: None if value is None else move(detach(value)) for key, value in carry.items()}


def train(config: RunConfig, out_dir: str | Path, *, resume: bool = False) -> dict:
    """Train per ``config`` into ``out_dir``; returns the last evaluation record."""
    ranks = distributed.setup()
    out_dir = Path(out_dir)
    last_path, best_path = out_dir / "checkpoints" / "last.pt", out_dir / "checkpoints" / "best.pt"
    metrics_path = out_dir / "metrics.jsonl"
    checkpoint = load_checkpoint(last_path) if resume else None
    # What a task built from its data (a translation model's subword vocabulary) comes back from the
    # checkpoint it resumes, or from its teacher's, so that it is never built again differently.
    artifacts = (checkpoint or (load_checkpoint(config.prune.teacher) if config.prune.teacher else {})
                 ).get("artifacts")
    task = make_task(config, ranks, artifacts)
    if ranks.is_main:
        print(task.loading_report())
    steps_per_epoch = task.steps_per_epoch
    total_steps = config.train.epochs * steps_per_epoch
    if config.train.max_steps is not None:
        total_steps = min(total_steps, config.train.max_steps)
    eval_every = config.train.eval_every or steps_per_epoch
    first_evaluation = min(eval_every, steps_per_epoch)
    if config.train.warmup > first_evaluation:
        raise ConfigError(f"train.warmup: {config.train.warmup} steps end after the first evaluation (step "
                          f"{first_evaluation}), where the plateau decay starts; shorten it")

    torch.manual_seed(config.train.seed)
    model_config, sizing = model_shape(config, len(task.vocabulary))
    if sizing is not None and ranks.is_main:
        print(sizing.explain())
    model = build_model(config, model_config, len(task.vocabulary)).to(ranks.device)
    teacher = load_teacher(config, task.vocabulary)
    if teacher is not None:
        teacher.to(ranks.device)
    trained = DistributedDataParallel(model) if ranks.enabled else model
    optimizer = make_optimizer(model, config)
    schedule = prune_schedule(config.prune, config.train.epochs, steps_per_epoch)
    try:
        pruner = Pruner(model, dict.fromkeys(config.prune.groups, schedule), optimizer,
                        exclude=config.prune.exclude, per_gate=config.prune.per_gate,
                        block=config.prune.block)
    except ValueError as error:  # e.g. a block shape that does not tile some matrix
        raise ConfigError(f"prune: {error} (prune.exclude leaves the parameters it names dense)") from None
    state, carry = LoopState(), task.new_carry()
    record = {}  # the last evaluation

    if resume:
        if _resumable(checkpoint["config"]) != _resumable(config_to_dict(config)):
            raise ConfigError(f"{last_path}: was written with a different config; "
                              "resume with the run's own config.yaml")
        if len(checkpoint["ranks"]) != ranks.world_size:
            raise CheckpointError(f"{last_path}: written by {len(checkpoint['ranks'])} processes; "
                                  f"resume with the same number, not {ranks.world_size}")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        pruner.load_state_dict(checkpoint["pruner"])
        state = LoopState(**checkpoint["loop"])
        mine = checkpoint["ranks"][ranks.rank]
        carry = _to({key: mine[key] for key in carry}, ranks.device)
        torch.set_rng_state(mine["rng"])
        if ranks.is_main:  # a run resumed after its last step returns its last evaluation
            evaluations = [r for r in _truncate_metrics(metrics_path, state.step) if r["kind"] == "eval"]
            record = evaluations[-1] if evaluations else {}
    elif ranks.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")
    if ranks.is_main:
        (out_dir / "config.yaml").write_text(dump_config(config))
        for name, data in task.artifacts().items():
            (out_dir / name).write_bytes(data)
        if sizing is not None:
            save_sizing(sizing, out_dir)

    def save(path: Path) -> None:
        per_rank = {**_to(carry, "cpu"), "rng": torch.get_rng_state()}
        gathered = distributed.gather(per_rank, ranks)  # every rank takes part
        if ranks.is_main:
            save_checkpoint(path, {
                "config": config_to_dict(config), "vocabulary": list(task.vocabulary),
                "model_config": model_config.model_dump(mode="json"), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "pruner": pruner.state_dict(),
                "loop": asdict(state), "ranks": gathered, "artifacts": task.artifacts()})

    def run_evaluation(end_of_epoch: bool) -> dict:
        # Every rank evaluates the same data with the same weights (and batch-norm statistics, taken
        # from rank 0): identical decisions, no messages.
        distributed.broadcast_buffers(model, ranks)
        metrics = task.evaluate(model)
        valid_loss = metrics["valid_loss"]
        record = {"kind": "eval", "step": state.step, "epoch": state.epoch, **metrics,
                  "sparsity": pruner.sparsity(), "lr": optimizer.param_groups[0]["lr"],
                  "train_seconds": state.train_seconds, **task.skipped_metrics(state.skipped)}
        annealing = config.train.anneal_from is not None and state.epoch >= config.train.anneal_from
        if valid_loss < state.best_valid_loss:
            state.best_valid_loss, state.evaluations_without_improvement = valid_loss, 0
        else:
            state.evaluations_without_improvement += 1
        plateau = state.evaluations_without_improvement > config.train.patience
        if end_of_epoch if annealing else plateau:
            for group in optimizer.param_groups:
                group["lr"] *= config.train.lr_decay
            state.evaluations_without_improvement = 0
        # best.pt: the best model with its final masks, never a denser one from before; the lowest
        # validation loss, or what the task selects by (translation: the highest BLEU).
        selection = task.selection(metrics)
        if state.step >= masks_final_from(schedule) and selection < state.best_checkpoint_loss:
            state.best_checkpoint_loss = selection
            save(best_path)
        save(last_path)
        if ranks.is_main:
            _append_metrics(metrics_path, record)
        return record

    progress = tqdm(total=total_steps, initial=state.step, unit="step",
                    disable=None if ranks.is_main else True)  # rank 0 on a TTY only
    while state.step < total_steps:
        for position, batch in task.batches(state.epoch, state.position):
            started = time.perf_counter()
            step = task.step_loss(trained, teacher, batch, carry)
            state.skipped += step.skipped
            if not torch.isfinite(step.loss):
                raise TrainingDiverged(f"loss is {step.loss.item()} at step {state.step + 1}; "
                                       f"the last good checkpoint is {last_path}")
            optimizer.zero_grad()
            step.loss.backward()
            if config.train.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.train.clip)
            if state.step < config.train.warmup:  # before any decay: the first evaluation comes later
                for group in optimizer.param_groups:
                    group["lr"] = config.train.lr * (state.step + 1) / config.train.warmup
            optimizer.step()
            pruner.step()
            state.step, state.position = state.step + 1, position + 1
            state.train_seconds += time.perf_counter() - started
            progress.update()
            if state.step % config.train.log_every == 0 and ranks.is_main and step.task_loss is not None:
                _append_metrics(metrics_path, {
                    "kind": "train", "step": state.step, "epoch": state.epoch,
                    **task.train_metrics(step.task_loss.item()), "lr": optimizer.param_groups[0]["lr"],
                    "sparsity": pruner.sparsity(), "threshold": pruner.thresholds(),
                    **task.skipped_metrics(state.skipped), "step_time": time.perf_counter() - started})
            end_of_epoch = state.position == steps_per_epoch
            if end_of_epoch:
                state.epoch, state.position, carry = state.epoch + 1, 0, task.new_carry()
            if state.step % eval_every == 0 or end_of_epoch or state.step == total_steps:
                record = run_evaluation(end_of_epoch)
                progress.set_postfix_str(f"{task.summary(record)}, sparsity {record['sparsity']:.1%}",
                                         refresh=False)
            if state.step >= total_steps or end_of_epoch:
                break
    progress.close()
    if ranks.enabled:  # check, once, the claim that ranks never diverge
        prints = distributed.gather(distributed.fingerprint({**model.state_dict(), **pruner.masks}), ranks)
        record = {**record, "ranks_identical": len(set(prints)) == 1}
        if ranks.is_main:
            _append_metrics(metrics_path, {"kind": "ranks", "step": state.step,
                                           "ranks_identical": record["ranks_identical"]})
    distributed.leave(ranks)
    return record
