import math

import pytest
import torch

from sparsernn.train.losses import distillation_loss, token_cross_entropy


def test_distillation_matches_hand_computation():
    student = torch.tensor([[[2.0, 0.0]]])  # (T=1, B=1, V=2)
    teacher = torch.tensor([[[0.0, 2.0]]])
    target = torch.tensor([[0]])
    temperature, alpha = 2.0, 0.25
    # At T = 2: student probabilities softmax([1, 0]), teacher softmax([0, 1]).
    p_student = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]
    p_teacher = p_student[::-1]
    kl = sum(t * math.log(t / s) for t, s in zip(p_teacher, p_student, strict=True))
    task = -math.log(math.exp(2) / (math.exp(2) + 1))
    loss, task_loss = distillation_loss(student, teacher, target, temperature, alpha)
    assert task_loss.item() == pytest.approx(task)
    assert loss.item() == pytest.approx(0.75 * task + 0.25 * 4 * kl)


def test_identical_teacher_adds_nothing_and_alpha_zero_is_plain_training():
    logits = torch.randn(3, 2, 5)
    targets = torch.randint(0, 5, (3, 2))
    loss, task = distillation_loss(logits, logits, targets, 3.0, 0.5)
    assert loss.item() == pytest.approx(0.5 * task.item(), abs=1e-6)
    loss, _ = distillation_loss(logits, torch.randn(3, 2, 5), targets, 3.0, 0.0)
    assert loss.item() == pytest.approx(token_cross_entropy(logits, targets).item())
