"""Training losses: next-token cross-entropy and knowledge distillation."""

from __future__ import annotations

import torch
from torch.nn import functional


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all positions; logits (T, B, V), targets (T, B)."""
    return functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinton et al. 2015: ``(1 - alpha) * CE(student, y) + alpha * T^2 * KL(teacher_T || student_T)``.

    The T^2 factor keeps the soft term's gradients on the scale of the hard term's. Returns the loss
    to minimise and the task cross-entropy (for perplexity).
    """
    task = token_cross_entropy(student_logits, targets)
    log_student = functional.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = functional.log_softmax(teacher_logits / temperature, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1).mean()
    return (1.0 - alpha) * task + alpha * temperature ** 2 * kl, task


def ctc_loss(log_probs: torch.Tensor, output_lengths: torch.Tensor, labels: torch.Tensor,
             label_lengths: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """Mean CTC loss per label over the utterances whose loss is finite, and how many were not.

    A loss is infinite when an utterance's output is too short for its labels; averaging it in (or
    zeroing it, as ``zero_infinity`` does) would hide it, so it is left out and counted. Returns
    ``None`` when no utterance of the batch has a finite loss.
    """
    losses = functional.ctc_loss(log_probs, labels, output_lengths, label_lengths, blank=0,
                                 reduction="none", zero_infinity=False)  # (B,)
    finite = torch.isfinite(losses)
    skipped = int((~finite).sum())
    if skipped == len(losses):
        return None, skipped
    return (losses[finite] / label_lengths[finite].to(losses.dtype)).mean(), skipped


def masked_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    """``T^2 * KL(teacher_T || student_T)`` per position, averaged over the positions where ``mask``
    is True (logits (..., classes), mask (...))."""
    log_student = functional.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = functional.log_softmax(teacher_logits / temperature, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1)
    return temperature ** 2 * kl[mask].mean()


def frame_distillation(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor,
                       output_lengths: torch.Tensor, temperature: float) -> torch.Tensor:
    """Frame-level distillation on CTC posteriors (T, B, alphabet), over the valid frames (Takashima et
    al. 2018 distil CTC models the same way)."""
    frames = student_log_probs.shape[0]
    mask = torch.arange(frames, device=student_log_probs.device)[:, None] < output_lengths.to(
        student_log_probs.device)[None]
    return masked_distillation(student_log_probs, teacher_log_probs, mask, temperature)


def padded_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, pad: int,
                         label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the target words that are not padding; logits (B, T, V), targets (B, T)."""
    return functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad,
                                    label_smoothing=label_smoothing)
