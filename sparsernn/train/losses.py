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
