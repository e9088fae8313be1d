"""Gradual magnitude pruning for PyTorch recurrent models: schedules, masks and the Pruner."""

from sparsernn.prune.masks import GROUPS, PrunableWeight, find_prunable
from sparsernn.prune.pruner import Pruner, ReportRow
from sparsernn.prune.report import format_report
from sparsernn.prune.schedules import (
    SCHEDULES,
    AGPSchedule,
    NarangSchedule,
    NoSchedule,
    OneShotSchedule,
    Schedule,
    agp_sparsity,
    make_schedule,
    narang_slopes,
    narang_threshold,
    oneshot_sparsity,
    paper_steps,
)

__all__ = [
    "GROUPS", "SCHEDULES", "AGPSchedule", "NarangSchedule", "NoSchedule", "OneShotSchedule",
    "PrunableWeight", "Pruner", "ReportRow", "Schedule", "agp_sparsity", "find_prunable",
    "format_report", "make_schedule", "narang_slopes", "narang_threshold", "oneshot_sparsity",
    "paper_steps",
]
