"""The one training loop: batch -> forward -> loss -> backward -> clip -> optimizer.step() ->
pruner.step() -> log -> evaluate / checkpoint. Every method is a configuration of it.

Run directory: ``config.yaml`` (resolved config), ``metrics.jsonl`` (one JSON object per logging
step and per evaluation), ``checkpoints/last.pt`` and ``checkpoints/best.pt``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from sparsernn.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from sparsernn.config import ConfigError, PruneConfig, RunConfig, config_to_dict, dump_config
from sparsernn.data.text import batchify, bptt_windows, load_corpus, num_windows
from sparsernn.models.lm import LanguageModel, detach
from sparsernn.prune import (
    AGPSchedule,
    NarangSchedule,
    NoSchedule,
    OneShotSchedule,
    Pruner,
    Schedule,
    paper_steps,
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class LoopState:
    """Where the loop stands: enough, with the RNG states, to resume exactly."""

    step: int = 0
    epoch: int = 0
    window: int = 0  # next BPTT window within the epoch
    best_valid_loss: float = math.inf
    evaluations_without_improvement: int = 0


def prune_schedule(config: PruneConfig, epochs: int, steps_per_epoch: int) -> Schedule:
    """The schedule a prune config asks for; window defaults from the paper's Table 1."""
    if config.method == "dense":
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


def make_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    train = config.train
    if train.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                               weight_decay=train.weight_decay)
    kind = torch.optim.Adam if train.optimizer == "adam" else torch.optim.AdamW
    return kind(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)


@torch.no_grad()
def evaluate(model: LanguageModel, columns: torch.Tensor, bptt: int) -> float:
    """Mean cross-entropy per token over a batchified split."""
    model.eval()
    total, count, hidden = 0.0, 0, None
    for _, inputs, targets in bptt_windows(columns, bptt):
        logits, hidden = model(inputs, hidden)
        total += nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    model.train()
    return total / count


def evaluate_checkpoint(path: str | Path, split: str = "test") -> dict:
    """Perplexity of a saved language model on one split of its corpus."""
    checkpoint = load_checkpoint(path)
    config = RunConfig.model_validate(checkpoint["config"])
    corpus = load_corpus(config.data)
    if list(corpus.vocabulary) != checkpoint["vocabulary"]:
        raise ConfigError(f"{config.data.path}: vocabulary differs from the one {path} was trained on")
    model = LanguageModel(len(corpus.vocabulary), config.model)
    model.load_state_dict(checkpoint["model"])
    loss = evaluate(model, batchify(corpus.split(split), config.data.eval_batch_size), config.data.bptt)
    nonzeros = sum(int(mask.sum()) for mask in checkpoint["pruner"]["masks"].values())
    total = sum(mask.numel() for mask in checkpoint["pruner"]["masks"].values())
    return {"split": split, "step": checkpoint["loop"]["step"], "loss": loss,
            "perplexity": math.exp(loss), "sparsity": 1 - nonzeros / total,
            "parameters": sum(p.numel() for p in model.parameters()),
            "pruned_tensor_nonzeros": nonzeros}


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


def train(config: RunConfig, out_dir: str | Path, *, resume: bool = False) -> dict:
    """Train per ``config`` into ``out_dir``; returns the final evaluation record."""
    out_dir = Path(out_dir)
    last_path, best_path = out_dir / "checkpoints" / "last.pt", out_dir / "checkpoints" / "best.pt"
    metrics_path = out_dir / "metrics.jsonl"
    corpus = load_corpus(config.data)
    train_columns = batchify(corpus.train, config.data.batch_size)
    valid_columns = batchify(corpus.valid, config.data.eval_batch_size)
    steps_per_epoch = num_windows(train_columns, config.data.bptt)
    total_steps = config.train.epochs * steps_per_epoch
    if config.train.max_steps is not None:
        total_steps = min(total_steps, config.train.max_steps)
    eval_every = config.train.eval_every or steps_per_epoch

    torch.manual_seed(config.train.seed)
    model = LanguageModel(len(corpus.vocabulary), config.model)
    optimizer = make_optimizer(model, config)
    schedule = prune_schedule(config.prune, config.train.epochs, steps_per_epoch)
    pruner = Pruner(model, dict.fromkeys(config.prune.groups, schedule), optimizer,
                    per_gate=config.prune.per_gate)
    state, hidden = LoopState(), None

    if resume:
        checkpoint = load_checkpoint(last_path)
        if _resumable(checkpoint["config"]) != _resumable(config_to_dict(config)):
            raise ConfigError(f"{last_path}: was written with a different config; "
                              "resume with the run's own config.yaml")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        pruner.load_state_dict(checkpoint["pruner"])
        state = LoopState(**checkpoint["loop"])
        hidden = checkpoint["hidden"]
        torch.set_rng_state(checkpoint["rng"])
        _truncate_metrics(metrics_path, state.step)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("")
    (out_dir / "config.yaml").write_text(dump_config(config))

    def checkpoint_data() -> dict:
        return {"format": FORMAT, "config": config_to_dict(config), "vocabulary": list(corpus.vocabulary),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "pruner": pruner.state_dict(), "loop": asdict(state), "hidden": detach(hidden),
                "rng": torch.get_rng_state()}

    def run_evaluation() -> dict:
        valid_loss = evaluate(model, valid_columns, config.data.bptt)
        record = {"kind": "eval", "step": state.step, "epoch": state.epoch, "valid_loss": valid_loss,
                  "valid_perplexity": math.exp(valid_loss), "sparsity": pruner.sparsity(),
                  "lr": optimizer.param_groups[0]["lr"]}
        if valid_loss < state.best_valid_loss:
            state.best_valid_loss, state.evaluations_without_improvement = valid_loss, 0
            save_checkpoint(best_path, checkpoint_data())
        else:
            state.evaluations_without_improvement += 1
            if state.evaluations_without_improvement > config.train.patience:
                for group in optimizer.param_groups:
                    group["lr"] *= config.train.lr_decay
                state.evaluations_without_improvement = 0
        _append_metrics(metrics_path, record)
        save_checkpoint(last_path, checkpoint_data())
        return record

    record = {}
    progress = tqdm(total=total_steps, initial=state.step, unit="step", disable=None)
    while state.step < total_steps:
        for window, inputs, targets in bptt_windows(train_columns, config.data.bptt, state.window):
            started = time.perf_counter()
            hidden = detach(hidden)
            logits, hidden = model(inputs, hidden)  # (T, B, V)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
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
            progress.update()
            if state.step % config.train.log_every == 0:
                _append_metrics(metrics_path, {
                    "kind": "train", "step": state.step, "epoch": state.epoch, "loss": loss.item(),
                    "perplexity": math.exp(loss.item()), "lr": optimizer.param_groups[0]["lr"],
                    "sparsity": pruner.sparsity(), "threshold": pruner.thresholds(),
                    "step_time": time.perf_counter() - started})
            end_of_epoch = state.window == steps_per_epoch
            if end_of_epoch:
                state.epoch, state.window, hidden = state.epoch + 1, 0, None
            if state.step % eval_every == 0 or end_of_epoch or state.step == total_steps:
                record = run_evaluation()
                progress.set_postfix(valid_ppl=f"{record['valid_perplexity']:.1f}",
                                     sparsity=f"{record['sparsity']:.1%}", refresh=False)
            if state.step >= total_steps or end_of_epoch:
                break
    progress.close()
    return record
