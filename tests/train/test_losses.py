import math

import pytest
import torch
from torch.nn import functional

from sparsernn.train.losses import ctc_loss, distillation_loss, frame_distillation, token_cross_entropy


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


def test_ctc_loss_leaves_out_and_counts_impossible_utterances():
    torch.manual_seed(0)
    log_probs = torch.randn(6, 3, 5).log_softmax(-1)  # (T, B, alphabet)
    lengths = torch.tensor([6, 6, 2])
    label_lengths = torch.tensor([3, 2, 2])
    labels = torch.tensor([1, 2, 3, 4, 4, 1, 1])  # third: "1 1" needs 3 frames, has 2: impossible
    loss, skipped = ctc_loss(log_probs, lengths, labels, label_lengths)
    assert skipped == 1
    each = [functional.ctc_loss(log_probs[:, b:b + 1], labels[start:start + n][None], lengths[b:b + 1],
                                torch.tensor([n]), reduction="sum") / n
            for b, (start, n) in enumerate([(0, 3), (3, 2)])]
    torch.testing.assert_close(loss, torch.stack(each).mean())
    none, skipped = ctc_loss(log_probs[:, 2:], lengths[2:], labels[5:], label_lengths[2:])
    assert none is None and skipped == 1


def test_frame_distillation_is_zero_for_equal_posteriors_and_ignores_padding():
    torch.manual_seed(0)
    student = torch.randn(4, 2, 5).log_softmax(-1)
    teacher = student.clone()
    lengths = torch.tensor([4, 2])
    assert frame_distillation(student, teacher, lengths, 2.0).item() == pytest.approx(0, abs=1e-7)
    teacher[2:, 1] = torch.randn(2, 5).log_softmax(-1)  # differs only in padding
    assert frame_distillation(student, teacher, lengths, 2.0).item() == pytest.approx(0, abs=1e-7)
    teacher[0, 0] = torch.tensor([0.0, -50, -50, -50, -50])
    expected = (teacher[0, 0] / 2).log_softmax(-1)
    kl = (expected.exp() * (expected - (student[0, 0] / 2).log_softmax(-1))).sum()
    mean_over_six_valid_frames = 4 * kl.item() / 6  # T^2 = 4
    result = frame_distillation(student, teacher, lengths, 2.0).item()
    assert result == pytest.approx(mean_over_six_valid_frames, rel=1e-5)
