"""The one training loop: batch -> forward -> loss -> backward -> clip -> optimizer.step() ->
pruner.step() -> log -> evaluate / checkpoint. Every method is a configuration of it
(``methods.py``); under ``torchrun`` it runs as DDP (``distributed.py``).

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
from sparsernn.data.text import batchify, bptt_windows, load_corpus, num_windows
from sparsernn.models.lm import LanguageModel, detach
from sparsernn.prune import Pruner
from sparsernn.train import distributed
from sparsernn.train.evaluate import evaluate
from sparsernn.train.losses import distillation_loss, token_cross_entropy
from sparsernn.train.methods import load_teacher, masks_final_from, model_shape, prune_schedule, save_sizing


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class LoopState:
    """Where the loop stands: enough, with the per-rank state, to resume exactly."""

    step: int = 0
    epoch: int = 0
    window: int = 0  # next BPTT window within the epoch
    best_valid_loss: float = math.inf  # for the learning-rate plateau
    best_checkpoint_loss: float = math.inf  # of best.pt, once masks are final
    evaluations_without_improvement: int = 0
    train_seconds: float = 0.0  # wall time spent in training steps, summed over resumes


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


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint we resume from."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def _resumable(config: dict) -> dict:
    """The config fields a resumed run must share (it may raise train.max_steps)."""
    return {**config, "train": {k: v for k, v in config["train"].items() if k != "max_steps"}}


def _to(hidden, device: torch.device):
    if hidden is None:
        return None
    return tuple(h.to(device) for h in hidden) if isinstance(hidden, tuple) else hidden.to(device)


def train(config: RunConfig, out_dir: str | Path, *, resume: bool = False) -> dict:
    """Train per ``config`` into ``out_dir``; returns the last evaluation record."""
    ranks = distributed.setup()
    out_dir = Path(out_dir)
    last_path, best_path = out_dir / "checkpoints" / "last.pt", out_dir / "checkpoints" / "best.pt"
    metrics_path = out_dir / "metrics.jsonl"
    corpus = load_corpus(config.data)
    train_columns = batchify(distributed.shard(corpus.train, ranks), config.data.batch_size)
    valid_columns = batchify(corpus.valid, config.data.eval_batch_size).to(ranks.device)
    train_columns = train_columns.to(ranks.device)
    steps_per_epoch = num_windows(train_columns, config.data.bptt)
    total_steps = config.train.epochs * steps_per_epoch
    if config.train.max_steps is not None:
        total_steps = min(total_steps, config.train.max_steps)
    eval_every = config.train.eval_every or steps_per_epoch

    torch.manual_seed(config.train.seed)
    model_config, sizing = model_shape(config, len(corpus.vocabulary))
    if sizing is not None and ranks.is_main:
        print(sizing.explain())
    model = LanguageModel(len(corpus.vocabulary), model_config).to(ranks.device)
    teacher = load_teacher(config.prune, corpus.vocabulary)
    if teacher is not None:
        teacher.to(ranks.device)
    trained = DistributedDataParallel(model) if ranks.enabled else model
    optimizer = make_optimizer(model, config)
    schedule = prune_schedule(config.prune, config.train.epochs, steps_per_epoch)
    pruner = Pruner(model, dict.fromkeys(config.prune.groups, schedule), optimizer,
                    per_gate=config.prune.per_gate, block=config.prune.block)
    state, hidden, teacher_hidden = LoopState(), None, None

    if resume:
        checkpoint = load_checkpoint(last_path)
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
        hidden, teacher_hidden = _to(mine["hidden"], ranks.device), _to(mine["teacher_hidden"], ranks.device)
        torch.set_rng_state(mine["rng"])
        if ranks.is_main:
            _truncate_metrics(metrics_path, state.step)
    elif ranks.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")
    if ranks.is_main:
        (out_dir / "config.yaml").write_text(dump_config(config))
        if sizing is not None:
            save_sizing(sizing, out_dir)

    def save(path: Path) -> None:
        per_rank = {"hidden": _to(detach(hidden), "cpu"), "teacher_hidden": _to(teacher_hidden, "cpu"),
                    "rng": torch.get_rng_state()}
        gathered = distributed.gather(per_rank, ranks)  # every rank takes part
        if ranks.is_main:
            save_checkpoint(path, {
                "config": config_to_dict(config), "vocabulary": list(corpus.vocabulary),
                "model_config": model_config.model_dump(mode="json"), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "pruner": pruner.state_dict(),
                "loop": asdict(state), "ranks": gathered})

    def run_evaluation() -> dict:
        # Every rank evaluates the same data with the same weights: identical decisions, no messages.
        valid_loss = evaluate(model, valid_columns, config.data.bptt)
        record = {"kind": "eval", "step": state.step, "epoch": state.epoch, "valid_loss": valid_loss,
                  "valid_perplexity": math.exp(valid_loss), "sparsity": pruner.sparsity(),
                  "lr": optimizer.param_groups[0]["lr"], "train_seconds": state.train_seconds}
        if valid_loss < state.best_valid_loss:
            state.best_valid_loss, state.evaluations_without_improvement = valid_loss, 0
        else:
            state.evaluations_without_improvement += 1
            if state.evaluations_without_improvement > config.train.patience:
                for group in optimizer.param_groups:
                    group["lr"] *= config.train.lr_decay
                state.evaluations_without_improvement = 0
        # best.pt: the best model with its final masks, never a denser one from before.
        if state.step >= masks_final_from(schedule) and valid_loss < state.best_checkpoint_loss:
            state.best_checkpoint_loss = valid_loss
            save(best_path)
        save(last_path)
        if ranks.is_main:
            _append_metrics(metrics_path, record)
        return record

    record = {}
    progress = tqdm(total=total_steps, initial=state.step, unit="step",
                    disable=None if ranks.is_main else True)  # rank 0 on a TTY only
    while state.step < total_steps:
        for window, inputs, targets in bptt_windows(train_columns, config.data.bptt, state.window):
            started = time.perf_counter()
            hidden = detach(hidden)
            logits, hidden = trained(inputs, hidden)  # (T, B, V)
            if teacher is None:
                loss = task_loss = token_cross_entropy(logits, targets)
            else:
                with torch.no_grad():
                    teacher_logits, teacher_hidden = teacher(inputs, teacher_hidden)
                loss, task_loss = distillation_loss(logits, teacher_logits, targets,
                                                    config.prune.temperature, config.prune.alpha)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss.item()} at step {state.step + 1}; "
                                       f"the last good checkpoint is {last_path}")
            optimizer.zero_grad()
            loss.backward()
            if config.train.clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.train.clip)
            optimizer.step()
            pruner.step()
            state.step, state.window = state.step + 1, window + 1
            state.train_seconds += time.perf_counter() - started
            progress.update()
            if state.step % config.train.log_every == 0 and ranks.is_main:
                _append_metrics(metrics_path, {
                    "kind": "train", "step": state.step, "epoch": state.epoch, "loss": task_loss.item(),
                    "perplexity": math.exp(task_loss.item()), "lr": optimizer.param_groups[0]["lr"],
                    "sparsity": pruner.sparsity(), "threshold": pruner.thresholds(),
                    "step_time": time.perf_counter() - started})
            end_of_epoch = state.window == steps_per_epoch
            if end_of_epoch:
                state.epoch, state.window, hidden, teacher_hidden = state.epoch + 1, 0, None, None
            if state.step % eval_every == 0 or end_of_epoch or state.step == total_steps:
                record = run_evaluation()
                progress.set_postfix(valid_ppl=f"{record['valid_perplexity']:.1f}",
                                     sparsity=f"{record['sparsity']:.1%}", refresh=False)
            if state.step >= total_steps or end_of_epoch:
                break
    progress.close()
    if ranks.enabled:  # check, once, the claim that ranks never diverge
        prints = distributed.gather(distributed.fingerprint({**model.state_dict(), **pruner.masks}), ranks)
        record = {**record, "ranks_identical": len(set(prints)) == 1}
        if ranks.is_main:
            _append_metrics(metrics_path, {"kind": "ranks", "step": state.step,
                                           "ranks_identical": record["ranks_identical"]})
    return record
