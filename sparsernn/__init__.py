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
           "format_report", "load_sparse", "save_sparse", "sparsify", "__version__"]

_LAZY = {"sparsify": "sparsernn.engine", "load_sparse": "sparsernn.engine", "save_sparse": "sparsernn.export"}


def __getattr__(name: str):
    """``sparsify``, ``save_sparse`` and ``load_sparse`` import the engine on first use, not at import."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparsernn' has no attribute {name!r}")
