import json

import pytest
import torch

from sparsernn.checkpoint import load_checkpoint
from sparsernn.config import ConfigError, RunConfig
from sparsernn.data.text import batchify, load_corpus
from sparsernn.models.lm import nonzero_parameters, parameter_count
from sparsernn.train.evaluate import evaluate, evaluate_checkpoint, generate, load_trained, score_file
from sparsernn.train.loop import train


def with_changes(raw, **sections):
    return RunConfig.model_validate({**raw, **{k: {**raw.get(k, {}), **v} for k, v in sections.items()}})


@pytest.fixture
def sparse_run(tmp_path, tiny_config):
    train(RunConfig.model_validate(tiny_config), tmp_path / "sparse")
    return tmp_path / "sparse" / "checkpoints" / "last.pt"


def test_small_dense_matches_the_sparse_models_nonzeros(tmp_path, tiny_config, sparse_run, capsys):
    config = with_changes(tiny_config, prune={"method": "small_dense", "match_checkpoint": str(sparse_run)},
                          train={"max_steps": 10})
    train(config, tmp_path / "small")
    target = nonzero_parameters(load_checkpoint(sparse_run)["model"])
    sizing = json.loads((tmp_path / "small" / "sizing.json").read_text())
    assert sizing["target_nonzeros"] == target
    assert "sizing: target" in capsys.readouterr().out
    model, _, vocabulary, checkpoint = load_trained(tmp_path / "small/checkpoints/last.pt")
    assert model.config.hidden_size == sizing["hidden_size"] < 16
    assert sum(p.numel() for p in model.parameters()) == sizing["parameters"]
    shape = model.config.model_copy(update={"hidden_size": sizing["hidden_size"] + 1,
                                            "embedding_size": sizing["hidden_size"] + 1})  # ratio 1
    assert sizing["parameters_one_size_up"] == parameter_count(len(vocabulary), shape)
    assert abs(sizing["parameters"] - target) <= abs(sizing["parameters_one_size_up"] - target)
    assert checkpoint["pruner"]["masks"]  # dense, but its masks are all ones
    assert evaluate_checkpoint(tmp_path / "small/checkpoints/last.pt")["sparsity"] == 0.0


def test_distillation_trains_and_resumes_exactly(tmp_path, tiny_config, sparse_run, monkeypatch):
    teacher = tmp_path / "sparse" / "checkpoints" / "last.pt"
    config = with_changes(tiny_config, prune={"method": "distill", "teacher": str(teacher), "alpha": 0.5,
                                              "match_nonzeros": 3000}, train={"max_steps": 30})
    record = train(config, tmp_path / "distill")
    assert record["step"] == 30 and record["sparsity"] == 0.0
    train(with_changes(tiny_config, prune={"method": "distill", "teacher": str(teacher), "alpha": 0.5,
                                           "match_nonzeros": 3000}, train={"max_steps": 17}),
          tmp_path / "resumed")  # stops at 17 with a checkpoint there
    train(config, tmp_path / "resumed", resume=True)
    straight = load_checkpoint(tmp_path / "distill/checkpoints/last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "resumed/checkpoints/last.pt")["model"]
    assert all(torch.equal(value, resumed[name]) for name, value in straight.items())


def test_distillation_rejects_a_teacher_of_another_vocabulary(tmp_path, tiny_config, sparse_run):
    from tests.conftest import write_corpus

    other = write_corpus(tmp_path / "other", seed=5)
    (other / "ptb.train.txt").write_text("completely different words here\n" * 50)
    config = with_changes(tiny_config, data={"path": str(other)},
                          prune={"method": "distill", "teacher": str(sparse_run)})
    with pytest.raises(ConfigError, match="different vocabulary"):
        train(config, tmp_path / "distill")


def test_score_and_generate(tmp_path, tiny_config, sparse_run, corpus_dir):
    result = score_file(sparse_run, corpus_dir / "ptb.valid.txt")
    model, config, _, _ = load_trained(sparse_run)
    oracle = evaluate(model, batchify(load_corpus(config.data).valid, 1), config.data.bptt)
    assert result["loss"] == pytest.approx(oracle, rel=1e-6)
    text = generate(sparse_run, "the cat", 12, temperature=0.8, seed=3)
    assert text.startswith("the cat") and len(text.split()) >= 2
    assert text == generate(sparse_run, "the cat", 12, temperature=0.8, seed=3)
