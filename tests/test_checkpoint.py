import pytest
import torch

from sparsernn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip_and_atomic_leftovers(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"step": 3, "model": {"w": torch.ones(2)}})
    save_checkpoint(path, {"step": 4, "model": {"w": torch.zeros(2)}})
    loaded = load_checkpoint(path)
    assert loaded["step"] == 4 and loaded["format"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary files left


def test_failed_write_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be pickled by torch.save
        save_checkpoint(path, {"step": 2, "bad": lambda: None})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_bad_checkpoints_named(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(1000)}})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable sparsernn checkpoint"):
        load_checkpoint(truncated)
    torch.save({"format": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="future.pt: checkpoint format 99"):
        load_checkpoint(tmp_path / "future.pt")
