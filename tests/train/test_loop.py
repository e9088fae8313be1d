
import pytest

from sparsernn.checkpoint import load_checkpoint
from sparsernn.config import ConfigError, RunConfig
from sparsernn.train import loop
from sparsernn.train.loop import TrainingDiverged, train
from tests.conftest import check_resume_is_exact, metrics_without_timing


def test_run_directory_and_pruning(tmp_path, tiny_config):
    record = train(RunConfig.model_validate(tiny_config), tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "config.yaml").exists()
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    tokens = sum(len(line.split()) + 1 for line in (tmp_path / "corpus/ptb.train.txt").open())
    per_epoch = -(-(tokens // 4 - 1) // 8)  # windows of 8 over tokens // 4 rows
    assert checkpoint["loop"]["step"] == record["step"] == 2 * per_epoch
    assert record["sparsity"] == pytest.approx(0.8, abs=0.01)
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["loop"]["step"] >= 40  # saved only once the masks are final (prune.end = 40)
    assert best["pruner"]["masks"].keys() == checkpoint["pruner"]["masks"].keys()
    assert 1 < record["valid_perplexity"] < len(checkpoint["vocabulary"])
    kinds = [r["kind"] for r in metrics_without_timing(run)]
    evals = {s for s in range(1, 2 * per_epoch + 1) if s % 20 == 0 or s % per_epoch == 0}
    assert [r["step"] for r in metrics_without_timing(run) if r["kind"] == "eval"] == sorted(evals)
    assert kinds.count("train") == 2 * per_epoch // 5
    train_record = next(r for r in metrics_without_timing(run) if r["kind"] == "train")
    assert set(train_record) == {"kind", "step", "epoch", "loss", "perplexity", "lr", "sparsity",
                                 "threshold"}


@pytest.mark.parametrize("crash, checkpointed", [(57, 40), (75, 66)])  # mid-epoch; after epoch end
def test_interrupted_run_resumes_to_identical_end(tmp_path, tiny_config, monkeypatch, crash,
                                                  checkpointed):
    config = RunConfig.model_validate(tiny_config)
    assert check_resume_is_exact(config, tmp_path, monkeypatch, crash) == checkpointed


def test_resuming_a_finished_run_returns_its_last_evaluation(tmp_path, tiny_config):
    config = RunConfig.model_validate(tiny_config)
    record = train(config, tmp_path / "run")
    before = (tmp_path / "run/checkpoints/last.pt").read_bytes()
    assert train(config, tmp_path / "run", resume=True) == record
    assert (tmp_path / "run/checkpoints/last.pt").read_bytes() == before


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, tiny_config, monkeypatch):
    config = RunConfig.model_validate(tiny_config)
    original = loop.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # training losses from step 41 on are NaN
        loss = original(*args, **kwargs)
        if kwargs.get("reduction") == "sum":  # evaluation
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] > 40 else loss

    monkeypatch.setattr(loop.nn.functional, "cross_entropy", poisoned)
    with pytest.raises(TrainingDiverged, match="loss is nan at step"):
        train(config, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pt")["loop"]["step"] == 40


def test_resume_rejects_a_different_config(tmp_path, tiny_config):
    train(RunConfig.model_validate({**tiny_config, "train": {**tiny_config["train"], "max_steps": 20}}),
          tmp_path / "run")
    changed = {**tiny_config, "model": {**tiny_config["model"], "hidden_size": 8}}
    with pytest.raises(ValueError, match="different config"):
        train(RunConfig.model_validate(changed), tmp_path / "run", resume=True)
    extended = {**tiny_config, "train": {**tiny_config["train"], "max_steps": 30}}
    assert train(RunConfig.model_validate(extended), tmp_path / "run", resume=True)["step"] == 30


def test_a_checkpoint_from_before_a_new_config_field_still_resumes(tmp_path, tiny_config):
    """A config field added later (here prune.exclude) takes its default in the old checkpoint's config."""
    from sparsernn.checkpoint import load_checkpoint, save_checkpoint

    train(RunConfig.model_validate({**tiny_config, "train": {**tiny_config["train"], "max_steps": 20}}),
          tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(last)
    del checkpoint["config"]["prune"]["exclude"]  # as an older sparsernn wrote it
    save_checkpoint(last, checkpoint)
    extended = {**tiny_config, "train": {**tiny_config["train"], "max_steps": 30}}
    assert train(RunConfig.model_validate(extended), tmp_path / "run", resume=True)["step"] == 30


def test_annealing_decays_the_learning_rate_after_every_epoch_from_the_given_one(tmp_path, tiny_config):
    tiny_config["train"].update(epochs=4, anneal_from=2, lr_decay=0.5, patience=1000)
    train(RunConfig.model_validate(tiny_config), tmp_path / "run")
    records = metrics_without_timing(tmp_path / "run")
    lr_by_epoch = {r["epoch"]: r["lr"] for r in records if r["kind"] == "train"}
    assert lr_by_epoch == {0: 5.0, 1: 5.0, 2: 2.5, 3: 1.25}


def test_warmup_raises_the_learning_rate_linearly_then_holds_it(tmp_path, tiny_config):
    tiny_config["train"].update(warmup=4, log_every=1, max_steps=6)
    train(RunConfig.model_validate(tiny_config), tmp_path / "run")
    lrs = [r["lr"] for r in metrics_without_timing(tmp_path / "run") if r["kind"] == "train"]
    assert lrs == [1.25, 2.5, 3.75, 5.0, 5.0, 5.0]  # lr 5.0 over 4 steps


def test_warmup_past_the_first_evaluation_is_refused(tmp_path, tiny_config):
    tiny_config["train"].update(warmup=3, eval_every=2)
    with pytest.raises(ConfigError, match="train.warmup: 3 steps end after the first evaluation"):
        train(RunConfig.model_validate(tiny_config), tmp_path / "run")
