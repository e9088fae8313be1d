"""Versioned plain-data checkpoints, written atomically.

A checkpoint is a dict of plain data (no pickled modules): format version, resolved config, model
state, masks and pruner state, optimizer state, loop state (step, data position, hidden state, best
validation loss, learning rate), and RNG states. It loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from sparsernn.errors import UserError

FORMAT = 1


class CheckpointError(UserError):
    """An unreadable, truncated or wrong-version checkpoint: the message names the file."""


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over ``path``:
    a crash leaves either the old checkpoint or the new one, never a broken one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save({"format": FORMAT, **checkpoint}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable sparsernn checkpoint "
                              f"({type(error).__name__}; truncated or corrupt?)") from None
    if not isinstance(checkpoint, dict) or "format" not in checkpoint:
        raise CheckpointError(f"{path}: not a sparsernn checkpoint (no format version)")
    if checkpoint["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {checkpoint['format']!r}, "
                              f"this sparsernn reads format {FORMAT}")
    return checkpoint
