"""What the one training loop trains on: language modelling, speech recognition with CTC, translation.

A task owns its data, builds batches from a resumable position, computes a step's loss (with a
teacher for distillation) and evaluates on the validation split. The loop (``loop.py``) does the rest
the same way for both: optimizer, clipping, pruner, logging, evaluation cadence, checkpoints, DDP.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsernn.config import RunConfig
from sparsernn.data import speech, translation
from sparsernn.data.text import batchify, bptt_windows, load_corpus, num_windows
from sparsernn.models import build_model
from sparsernn.models.lm import detach
from sparsernn.train import distributed
from sparsernn.train.distributed import Distributed
from sparsernn.train.evaluate import evaluate as lm_loss
from sparsernn.train.losses import (
    ctc_loss,
    distillation_loss,
    frame_distillation,
    masked_distillation,
    padded_cross_entropy,
    token_cross_entropy,
)
from sparsernn.train.metrics import error_rates, greedy_decode
from sparsernn.train.translate import score_set


@dataclass
class StepLoss:
    loss: torch.Tensor  # to minimise
    task_loss: torch.Tensor | None  # the task's own loss (cross-entropy or CTC); None if all skipped
    skipped: int = 0  # utterances left out (non-finite CTC loss)


class _Task:
    """What every task shares unless it says otherwise."""

    @staticmethod
    def artifacts() -> dict[str, bytes]:
        """Files the task built from its data, kept in checkpoints and the run directory."""
        return {}

    @staticmethod
    def selection(metrics: dict) -> float:
        """What best.pt minimises: the validation loss."""
        return metrics["valid_loss"]


class LanguageModelling(_Task):
    """Word- or character-level next-token prediction in truncated-BPTT windows; the hidden state is
    carried from window to window within an epoch."""

    def __init__(self, config: RunConfig, ranks: Distributed):
        self.config = config
        corpus = load_corpus(config.data)
        self.vocabulary = corpus.vocabulary
        train = batchify(distributed.shard(corpus.train, ranks), config.data.batch_size)
        self.train_columns = train.to(ranks.device)
        self.valid_columns = batchify(corpus.valid, config.data.eval_batch_size).to(ranks.device)
        self.steps_per_epoch = num_windows(self.train_columns, config.data.bptt)
        self.device = ranks.device

    def loading_report(self) -> str:
        return f"vocabulary: {len(self.vocabulary):,} {self.config.data.level}s"

    def new_carry(self) -> dict:
        return {"hidden": None, "teacher_hidden": None}

    def batches(self, epoch: int, first: int) -> Iterator[tuple[int, Any]]:
        for window, inputs, targets in bptt_windows(self.train_columns, self.config.data.bptt, first):
            yield window, (inputs, targets)

    def step_loss(self, model: nn.Module, teacher: nn.Module | None, batch, carry: dict) -> StepLoss:
        inputs, targets = batch
        logits, carry["hidden"] = model(inputs, detach(carry["hidden"]))  # (T, B, V)
        if teacher is None:
            loss = token_cross_entropy(logits, targets)
            return StepLoss(loss, loss)
        with torch.no_grad():
            teacher_logits, carry["teacher_hidden"] = teacher(inputs, carry["teacher_hidden"])
        loss, task = distillation_loss(logits, teacher_logits, targets, self.config.prune.temperature,
                                       self.config.prune.alpha)
        return StepLoss(loss, task)

    def train_metrics(self, task_loss: float) -> dict:
        return {"loss": task_loss, "perplexity": math.exp(task_loss)}

    @staticmethod
    def skipped_metrics(skipped: int) -> dict:
        return {}  # nothing is ever skipped

    def evaluate(self, model: nn.Module) -> dict:
        loss = lm_loss(model, self.valid_columns, self.config.data.bptt)
        return {"valid_loss": loss, "valid_perplexity": math.exp(loss)}

    @staticmethod
    def summary(record: dict) -> str:
        return f"validation perplexity {record['valid_perplexity']:.2f}"


class SpeechRecognition(_Task):
    """Utterances in length-sorted batches (a new batch order each epoch), CTC loss; validation on
    held-out training speakers (or a validation manifest) with greedy CER and WER."""

    def __init__(self, config: RunConfig, ranks: Distributed):
        self.config, self.ranks = config, ranks
        sets = speech.load_speech(config.data, splits=("train", "valid"))
        self.train_set, self.valid_set = sets["train"], sets["valid"]
        self.vocabulary = speech.ALPHABET
        # The model's output length depends only on its convolutions: check every utterance now.
        with torch.device("meta"):
            probe = build_model(config, config.model, len(self.vocabulary))
        self.train_set = speech.drop_too_short(self.train_set, probe.output_lengths, config.data.on_bad_audio)
        self.valid_set = speech.drop_too_short(self.valid_set, probe.output_lengths, config.data.on_bad_audio)
        if len(self.train_set) == 0 or len(self.valid_set) == 0:
            raise speech.DataError(f"{config.data.path}: no usable utterances in the "
                                   f"{'training' if len(self.train_set) == 0 else 'validation'} split")
        batches = -(-len(self.train_set) // config.data.batch_size)
        self.steps_per_epoch = max(1, batches // ranks.world_size)
        self.device = ranks.device

    def loading_report(self) -> str:
        lines = [f"{name}: {len(split)} utterances, {split.seconds(self.config.data.hop_ms) / 60:.1f} min"
                 for name, split in (("train", self.train_set), ("valid", self.valid_set))]
        for split in (self.train_set, self.valid_set):
            lines += [f"skipped {reason}" for reason in split.skipped]
        return "\n".join(lines)

    def new_carry(self) -> dict:
        return {}

    def batches(self, epoch: int, first: int) -> Iterator[tuple[int, Any]]:
        data = self.config.data
        order = speech.length_sorted_batches(self.train_set, data.batch_size, epoch, self.config.train.seed)
        mine = order[self.ranks.rank::self.ranks.world_size][:self.steps_per_epoch]
        generator, augment = torch.Generator(), None
        if data.freq_masks or data.time_masks:
            def augment(values):
                return speech.spec_augment(values, data, generator)
        for position in range(first, len(mine)):
            # Masks drawn from a generator seeded by (seed, epoch, rank, position): resumable exactly.
            generator.manual_seed(hash((self.config.train.seed, epoch, self.ranks.rank, position)))
            yield position, speech.collate(self.train_set, mine[position], augment).to(self.device)

    def step_loss(self, model: nn.Module, teacher: nn.Module | None, batch: speech.SpeechBatch,
                  carry: dict) -> StepLoss:
        log_probs, lengths = model(batch.features, batch.lengths)  # (T, B, alphabet)
        task, skipped = ctc_loss(log_probs, lengths, batch.labels, batch.label_lengths)
        if task is None:  # every utterance skipped: a zero loss keeps DDP's ranks in step
            return StepLoss(log_probs.sum() * 0.0, None, skipped)
        if teacher is None:
            return StepLoss(task, task, skipped)
        with torch.no_grad():
            teacher_log_probs, _ = teacher(batch.features, batch.lengths)
        alpha = self.config.prune.alpha
        soft = frame_distillation(log_probs, teacher_log_probs, lengths, self.config.prune.temperature)
        return StepLoss((1 - alpha) * task + alpha * soft, task, skipped)

    def train_metrics(self, task_loss: float) -> dict:
        return {"loss": task_loss}

    @staticmethod
    def skipped_metrics(skipped: int) -> dict:
        return {"skipped_in_training": skipped}  # utterances with a non-finite CTC loss, so far

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict:
        model.eval()
        total, count, skipped, hypotheses, references = 0.0, 0, 0, [], []
        for batch in speech.iterate(self.valid_set, self.config.data.eval_batch_size):
            batch = batch.to(self.device)
            log_probs, lengths = model(batch.features, batch.lengths)
            loss, bad = ctc_loss(log_probs, lengths, batch.labels, batch.label_lengths)
            good = len(batch.indices) - bad
            if loss is not None:
                total, count = total + loss.item() * good, count + good
            skipped += bad
            for row, index in enumerate(batch.indices):
                hypotheses.append(greedy_decode(log_probs[:lengths[row], row].cpu(), self.vocabulary))
                references.append(self.valid_set.texts[index])
        model.train()
        rates = error_rates(references, hypotheses)
        return {"valid_loss": total / max(1, count), "valid_cer": rates["cer"], "valid_wer": rates["wer"],
                "valid_skipped": skipped}

    @staticmethod
    def summary(record: dict) -> str:
        return f"validation CER {record['valid_cer']:.1%}, WER {record['valid_wer']:.1%}"


class Translation(_Task):
    """Sentence pairs in length-bucketed batches (a new order each epoch), teacher forcing with
    cross-entropy (label smoothing optional); validation loss, perplexity and greedy BLEU. The
    checkpoint keeps the subword model (``artifacts``), so evaluation and export never retrain it."""

    def __init__(self, config: RunConfig, ranks: Distributed, artifacts: dict | None = None):
        self.config, self.ranks, self.device = config, ranks, ranks.device
        tokenizer = translation.Tokenizer(artifacts["tokenizer.model"]) if artifacts else None
        sets, self.tokenizer = translation.load_translation(config.data, tokenizer, splits=("train", "valid"))
        self.train_set, self.valid_set = sets["train"], sets["valid"]
        if len(self.train_set) == 0:
            raise translation.DataError(f"{config.data.path}: no usable training pairs")
        self.vocabulary = self.tokenizer.pieces
        batches = -(-len(self.train_set) // config.data.batch_size)
        self.steps_per_epoch = max(1, batches // ranks.world_size)

    def artifacts(self) -> dict[str, bytes]:
        return {"tokenizer.model": self.tokenizer.model}

    def loading_report(self) -> str:
        skipped = ", ".join(f"{count} {reason}" for reason, count in self.train_set.skipped.items())
        return (f"train: {len(self.train_set):,} pairs (skipped: {skipped}); valid: "
                f"{len(self.valid_set):,} pairs; vocabulary: {len(self.vocabulary):,} "
                f"{self.config.data.vocabulary} subwords")

    def new_carry(self) -> dict:
        return {}

    def batches(self, epoch: int, first: int) -> Iterator[tuple[int, Any]]:
        order = translation.bucketed_batches(self.train_set, self.config.data.batch_size, epoch,
                                             self.config.train.seed)
        mine = order[self.ranks.rank::self.ranks.world_size][:self.steps_per_epoch]
        for position in range(first, len(mine)):
            yield position, translation.collate(self.train_set, mine[position]).to(self.device)

    def step_loss(self, model: nn.Module, teacher: nn.Module | None, batch, carry: dict) -> StepLoss:
        logits = model(batch.source, batch.source_lengths, batch.target_in)  # (B, T, V)
        task = padded_cross_entropy(logits, batch.target_out, translation.PAD)
        smoothing = self.config.train.label_smoothing
        loss = (padded_cross_entropy(logits, batch.target_out, translation.PAD, smoothing) if smoothing
                else task)
        if teacher is None:
            return StepLoss(loss, task)
        with torch.no_grad():
            teacher_logits = teacher(batch.source, batch.source_lengths, batch.target_in)
        soft = masked_distillation(logits, teacher_logits, batch.target_out != translation.PAD,
                                   self.config.prune.temperature)
        alpha = self.config.prune.alpha
        return StepLoss((1 - alpha) * loss + alpha * soft, task)

    def train_metrics(self, task_loss: float) -> dict:
        return {"loss": task_loss, "perplexity": math.exp(task_loss)}

    @staticmethod
    def skipped_metrics(skipped: int) -> dict:
        return {}

    def evaluate(self, model: nn.Module) -> dict:
        scores = score_set(model, self.valid_set, self.tokenizer, self.config.data, beam=0,
                           device=self.device)
        return {"valid_loss": scores["loss"], "valid_perplexity": scores["perplexity"],
                "valid_bleu": scores["bleu"]}

    @staticmethod
    def selection(metrics: dict) -> float:
        """best.pt is the model with the highest validation BLEU (lower is better here)."""
        return -metrics["valid_bleu"]

    @staticmethod
    def summary(record: dict) -> str:
        return f"validation BLEU {record['valid_bleu']:.2f}, perplexity {record['valid_perplexity']:.2f}"


Task = LanguageModelling | SpeechRecognition | Translation


def task_class(config: RunConfig) -> type[Task]:
    if config.translation:
        return Translation
    return SpeechRecognition if config.speech else LanguageModelling


def make_task(config: RunConfig, ranks: Distributed, artifacts: dict | None = None) -> Task:
    """The task a config names; ``artifacts`` (a resumed or teacher checkpoint's) are reused, not rebuilt."""
    if config.translation:
        return Translation(config, ranks, artifacts)
    return task_class(config)(config, ranks)

