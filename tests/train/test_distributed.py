"""`torchrun --nproc_per_node=2 -m sparsernn train` on CPU (gloo): ranks stay identical, resume works."""

import json
import os
import subprocess
import sys

import torch
import yaml

from sparsernn.checkpoint import load_checkpoint
from sparsernn.train.distributed import Distributed, fingerprint, shard


def torchrun(config_path, out_dir, *extra):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "sparsernn", "train", str(config_path), "--out", str(out_dir), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_process_training_keeps_ranks_identical_and_resumes(tmp_path, tiny_config):
    tiny_config["train"]["max_steps"] = 24
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config))
    result = torchrun(config_path, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    final = records(tmp_path / "run")[-1]
    assert final == {"kind": "ranks", "step": 24, "ranks_identical": True}
    checkpoint = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert len(checkpoint["ranks"]) == 2  # per-rank hidden state and RNG
    assert not torch.equal(checkpoint["ranks"][0]["hidden"][0], checkpoint["ranks"][1]["hidden"][0])
    assert checkpoint["pruner"]["step"] == 24 and 0 < checkpoint["loop"]["step"]

    result = torchrun(config_path, tmp_path / "run", "--resume", "--set", "train.max_steps=30")
    assert result.returncode == 0, result.stderr[-3000:]
    assert records(tmp_path / "run")[-1] == {"kind": "ranks", "step": 30, "ranks_identical": True}


def test_two_process_speech_training_keeps_ranks_identical(tmp_path, speech_config):
    """Each rank takes every other batch; batch-norm statistics are taken from rank 0 before every
    evaluation, so the models, masks and buffers agree bit for bit."""
    speech_config["train"]["epochs"] = 2
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(speech_config))
    result = torchrun(config_path, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert records(tmp_path / "run")[-1] == {"kind": "ranks", "step": 2, "ranks_identical": True}


def test_shards_are_disjoint_and_equal():
    tokens = torch.arange(11)
    parts = [shard(tokens, Distributed(rank, 3)) for rank in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_fingerprint_sees_one_bit():
    a = {"w": torch.tensor([1.0, 2.0])}
    b = {"w": torch.tensor([1.0, torch.nextafter(torch.tensor(2.0), torch.tensor(3.0)).item()])}
    assert fingerprint(a) == fingerprint({"w": torch.tensor([1.0, 2.0])}) != fingerprint(b)


def test_two_process_translation_training_keeps_ranks_identical(tmp_path):
    """Each rank takes every other bucketed batch and trains the same subword model (one thread,
    deterministic); the ranks end bit for bit equal."""
    from tests.conftest import translation_config_for, write_parallel

    config = translation_config_for(write_parallel(tmp_path / "raw", lines=(200, 20, 20)))
    config["train"].update(epochs=1, max_steps=6)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = torchrun(config_path, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert records(tmp_path / "run")[-1] == {"kind": "ranks", "step": 6, "ranks_identical": True}


def test_a_process_group_the_caller_made_outlives_training(monkeypatch):
    """setup() joins a group the caller already made and leave() does not destroy it; only the group
    setup() itself created is destroyed at the end of training."""
    import torch.distributed as dist

    from sparsernn.train.distributed import leave, setup

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        info = setup()
        assert not info.joined
        leave(info)
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
