"""The one training loop on translation: run directory, subword model kept, BLEU selection, resume,
methods, evaluation, the CLI, and export to the engine."""

import json

import pytest
import yaml

from sparsernn.checkpoint import load_checkpoint
from sparsernn.cli import main
from sparsernn.config import RunConfig
from sparsernn.train.loop import train
from sparsernn.train.translate import evaluate_translation, translate
from tests.conftest import (
    check_resume_is_exact,
    metrics_without_timing,
    translation_config_for,
    write_parallel,
)


@pytest.fixture(scope="module")
def parallel_dir(tmp_path_factory):
    return write_parallel(tmp_path_factory.mktemp("multi30k") / "raw")


@pytest.fixture(scope="module")
def translation_run(tmp_path_factory, parallel_dir):
    config = translation_config_for(parallel_dir)
    config["train"]["epochs"] = 8
    out = tmp_path_factory.mktemp("mt") / "run"
    return out, train(RunConfig.model_validate(config), out)


def test_training_prunes_keeps_the_subword_model_and_selects_by_bleu(translation_run):
    run, record = translation_run
    assert record["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert record["valid_bleu"] > 30  # the toy pair is learnable: a word for a word
    checkpoint = load_checkpoint(run / "checkpoints/best.pt")
    assert checkpoint["artifacts"]["tokenizer.model"] == (run / "tokenizer.model").read_bytes()
    evaluations = [r for r in metrics_without_timing(run) if r["kind"] == "eval"]
    final_masks = [r for r in evaluations if r["step"] >= 80]
    best = max(final_masks, key=lambda r: r["valid_bleu"])
    assert checkpoint["loop"]["step"] == best["step"]  # the highest BLEU once masks are final
    assert {"valid_loss", "valid_perplexity", "valid_bleu"} <= set(evaluations[-1])


def test_evaluate_translate_and_the_cli(translation_run, parallel_dir, tmp_path, capsys, monkeypatch):
    run, _ = translation_run
    best = run / "checkpoints/best.pt"
    greedy, beam = evaluate_translation(best, "test"), evaluate_translation(best, "test", beam=3)
    assert greedy["pairs"] == beam["pairs"] == 40
    assert greedy["bleu_signature"].startswith("nrefs:1|case:mixed")
    assert greedy["bleu"] > 30 and beam["bleu"] > 30 and 0 < greedy["chrf"] <= 100
    lines = ["der hund läuft im park", "", "ein mann sieht die katze"]
    texts = translate(best, lines)
    assert texts[1] == "" and texts[0] and texts[0][0].isupper()
    (tmp_path / "in.de").write_text("\n".join(lines) + "\n")
    assert main(["translate", str(best), str(tmp_path / "in.de")]) == 0
    assert capsys.readouterr().out.splitlines() == texts
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("der hund läuft im park\n"))
    assert main(["translate", str(best), "-", "--beam", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == translate(best, lines[:1], beam=3)
    assert main(["evaluate", str(best), "--split", "valid", "--beam", "2"]) == 0
    out = capsys.readouterr().out
    assert "BLEU" in out and "nrefs:1" in out and "chrF" in out and "beam 2" in out


def test_export_runs_in_the_engine_with_the_same_translations(translation_run, parallel_dir, tmp_path):
    from sparsernn.data.translation import read_lines
    from sparsernn.engine import TranslationEngine
    from sparsernn.train.translate import load_translator, translate_lines

    run, _ = translation_run
    assert main(["export", str(run / "checkpoints/best.pt"), "-o", str(tmp_path / "mt.safetensors")]) == 0
    engine = TranslationEngine(tmp_path / "mt.safetensors", threads=2)
    model, config, tokenizer, _ = load_translator(run / "checkpoints/best.pt")
    sentences = read_lines(parallel_dir / "test_2016_flickr.de.gz")
    for beam in (0, 3):
        assert engine.translate(sentences, beam) == translate_lines(model, tokenizer, sentences, beam,
                                                                    config.data.max_output)


def test_interrupted_run_resumes_to_identical_end(tmp_path, parallel_dir, monkeypatch):
    raw = translation_config_for(parallel_dir)
    raw["train"].update(max_steps=50, eval_every=20)  # evaluations (greedy BLEU) before and after the stop
    assert check_resume_is_exact(RunConfig.model_validate(raw), tmp_path, monkeypatch, crash=30) == 20


def test_small_dense_and_distillation_share_the_subword_model(tmp_path, parallel_dir, translation_run):
    run, _ = translation_run
    best = str(run / "checkpoints/best.pt")
    raw = translation_config_for(parallel_dir)
    raw["train"]["epochs"] = 2
    small = {**raw, "prune": {"method": "small_dense", "match_checkpoint": best}}
    train(RunConfig.model_validate(small), tmp_path / "small")
    sizing = json.loads((tmp_path / "small/sizing.json").read_text())
    assert sizing["hidden_size"] % 2 == 0 and sizing["hidden_size"] < 32
    distill = {**raw, "prune": {"method": "distill", "teacher": best, "match_checkpoint": best,
                                "alpha": 0.5}}
    record = train(RunConfig.model_validate(distill), tmp_path / "distill")
    assert record["valid_bleu"] >= 0
    teacher_tokenizer = load_checkpoint(best)["artifacts"]
    assert load_checkpoint(tmp_path / "distill/checkpoints/last.pt")["artifacts"] == teacher_tokenizer


def test_bad_parallel_data_stops_before_training(tmp_path, capsys):
    data = write_parallel(tmp_path / "raw", gzip_files=False)
    (data / "train.en").write_text("\n".join((data / "train.en").read_text().splitlines()[:-3]) + "\n")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(translation_config_for(data)))
    assert main(["train", str(config_path), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "train.en: 597 lines, but" in error and "train.de has 600" in error
    assert len(error.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_blocks_that_do_not_tile_a_matrix_name_it_and_exclude_leaves_it_dense(tmp_path, parallel_dir):
    """8x1 blocks cannot tile the 1 x H attention score: a config error naming it, unless excluded."""
    from sparsernn.config import ConfigError

    config = translation_config_for(parallel_dir)
    config["train"]["max_steps"] = 30
    config["prune"] = {"method": "oneshot", "at": 10, "sparsity": 0.5, "block": [8, 1]}
    with pytest.raises(ConfigError, match=r"attention_score.weight .*prune.exclude"):
        train(RunConfig.model_validate(config), tmp_path / "refused")
    config["prune"]["exclude"] = ["attention_score.weight", "output.*"]  # this vocabulary: 60 rows
    train(RunConfig.model_validate(config), tmp_path / "run")
    masks = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["pruner"]["masks"]
    assert not {"attention_score.weight", "output.weight"} & set(masks)
    assert "decoder.weight_hh_l0" in masks
    kept = masks["decoder.weight_hh_l0"].reshape(-1, 8, masks["decoder.weight_hh_l0"].shape[1])
    assert bool((kept.all(dim=1) | ~kept.any(dim=1)).all())  # whole 8x1 blocks kept or removed
