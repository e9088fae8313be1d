"""sparsernn: train sparse recurrent networks in one ordinary training run (Narang et al. 2017)."""

from sparsernn.prune import (
    AGPSchedule,
    NarangSchedule,
    NoSchedule,
    OneShotSchedule,
    Pruner,
    format_report,
)

__version__ = "0.1.0"
__all__ = ["AGPSchedule", "NarangSchedule", "NoSchedule", "OneShotSchedule", "Pruner",
           "format_report", "__version__"]
