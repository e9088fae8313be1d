"""The one training loop on the speech task: run directory, pruning, resume, methods, evaluate, CLI."""

import json

import pytest
import torch
import yaml

from sparsernn import ngram
from sparsernn.checkpoint import load_checkpoint
from sparsernn.cli import main
from sparsernn.config import RunConfig
from sparsernn.train.loop import train
from sparsernn.train.recognize import evaluate_speech, transcribe
from tests.conftest import check_resume_is_exact, metrics_without_timing


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory, an4_dir):
    from tests.conftest import speech_config_for

    out = tmp_path_factory.mktemp("speech") / "run"
    record = train(RunConfig.model_validate(speech_config_for(an4_dir)), out)
    return out, record


def test_training_prunes_and_writes_the_run_directory(speech_run):
    run, record = speech_run
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    assert checkpoint["loop"]["step"] == record["step"] == 4 * 3  # 12 utterances / batch 4, 4 epochs
    assert record["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert checkpoint["vocabulary"][0] == "<blank>" and len(checkpoint["vocabulary"]) == 29
    masks = checkpoint["pruner"]["masks"]
    assert set(masks) == {f"rnns.{i}.weight_{k}_l0{s}" for i in range(2) for k in ("ih", "hh")
                          for s in ("", "_reverse")} | {"fc.weight"}
    evals = [r for r in metrics_without_timing(run) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6, 9, 12]
    assert {"valid_loss", "valid_cer", "valid_wer", "valid_skipped", "skipped_in_training"} <= set(evals[-1])
    train_record = next(r for r in metrics_without_timing(run) if r["kind"] == "train")
    assert "perplexity" not in train_record and train_record["skipped_in_training"] == 0


def test_evaluate_and_transcribe(speech_run, an4_dir):
    run, _ = speech_run
    result = evaluate_speech(run / "checkpoints/best.pt", "test", beam=4)
    assert result["utterances"] == 8 and 0 <= result["cer_greedy"] and 0 <= result["cer_beam"]
    assert result["nonzero_parameters"] < result["parameters"]
    wav = next((an4_dir / "wav/an4test_clstk").rglob("*.wav"))
    texts = transcribe(run / "checkpoints/best.pt", [wav, wav], beam=0)
    assert len(texts) == 2 and texts[0] == texts[1] and set(texts[0]) <= set(" 'ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def test_language_model_built_from_the_training_transcripts_tuned_and_fused(speech_run, an4_dir, tmp_path,
                                                                          capsys):
    run, _ = speech_run
    config, best, arpa = run / "config.yaml", str(run / "checkpoints/best.pt"), str(tmp_path / "lm.arpa")
    assert main(["lm", "build", "--config", str(config), "-o", arpa, "--order", "2"]) == 0
    assert "2-gram modified Kneser-Ney model of 12 sentences" in capsys.readouterr().out  # 3 of 4 speakers
    assert main(["lm", "tune", best, "--lm", arpa, "--beam", "4", "--alphas", "0,1", "--betas", "0,2"]) == 0
    out = capsys.readouterr().out
    assert out.count("validation WER") == 4 and "best on the validation split" in out
    result = evaluate_speech(best, "test", beam=4, lm=arpa, alpha=0.0, beta=0.0)
    # alpha = beta = 0: the fused search ranks as the plain one does
    assert (result["cer_lm"], result["wer_lm"]) == (result["cer_beam"], result["wer_beam"])
    assert result["rtf_lm"] > 0 and result["lm_order"] == 2
    assert main(["evaluate", best, "--lm", arpa, "--alpha", "1", "--beta", "2", "--beam", "4"]) == 0
    assert "beam 4 + 2-gram LM (alpha 1, beta 2)" in capsys.readouterr().out
    wav = str(next((an4_dir / "wav/an4test_clstk").rglob("*.wav")))
    assert main(["transcribe", best, wav, "--lm", arpa, "--beam", "4"]) == 0
    assert capsys.readouterr().out.startswith(wav)
    # --lexicon: every word of every transcript is one of the LM's
    lexicon = evaluate_speech(best, "test", beam=4, lm=arpa, alpha=1.0, beta=2.0, lexicon=True)
    assert lexicon["lexicon"] and 0 <= lexicon["cer_lm"]
    words = ngram.NgramLM.load(arpa).words
    assert main(["transcribe", best, wav, wav, "--lm", arpa, "--beam", "4", "--lexicon"]) == 0
    for line in capsys.readouterr().out.splitlines():
        assert set(line.split("\t")[1].split()) <= words
    assert main(["evaluate", best, "--lm", arpa, "--beam", "4", "--lexicon"]) == 0
    assert "(alpha 0.5, beta 1, its words only)" in capsys.readouterr().out


def test_language_model_mistakes_are_clear_errors(speech_run, tmp_path, capsys):
    run, _ = speech_run
    best = str(run / "checkpoints/best.pt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    assert main(["lm", "build", str(tmp_path / "empty.txt"), "-o", str(tmp_path / "x.arpa")]) == 2
    assert "empty.txt: the file is empty" in capsys.readouterr().err
    (tmp_path / "lower.txt").write_text("one two\nthree\n")
    assert main(["lm", "build", str(tmp_path / "lower.txt"), "-o", str(tmp_path / "lower.arpa")]) == 0
    assert main(["evaluate", best, "--lm", str(tmp_path / "lower.arpa")]) == 2
    assert "cannot emit: e h n o r t w" in capsys.readouterr().err
    assert main(["lm", "build", str(tmp_path / "lower.txt"), "--upper", "-o", str(tmp_path / "up.arpa")]) == 0
    assert main(["evaluate", best, "--lm", str(tmp_path / "up.arpa"), "--beam", "2"]) == 0
    (tmp_path / "bad.arpa").write_text("\\data\\\nngram 1=x\n")
    assert main(["transcribe", best, "x.wav", "--lm", str(tmp_path / "bad.arpa")]) == 2
    assert "bad.arpa:2: expected 'ngram N=COUNT'" in capsys.readouterr().err
    assert main(["evaluate", best, "--lm", str(tmp_path / "up.arpa"), "--beam", "0"]) == 2
    assert "--lm needs a beam search" in capsys.readouterr().err
    assert main(["transcribe", best, "x.wav", "--lexicon"]) == 2
    assert "--lexicon keeps transcripts to the words of --lm" in capsys.readouterr().err


def test_a_checkpoint_from_before_the_input_norm_loads_without_it(speech_run, tmp_path):
    from sparsernn.checkpoint import save_checkpoint
    from sparsernn.models.ctc import SpeechModel
    from sparsernn.train.evaluate import load_trained

    run, _ = speech_run
    checkpoint = load_checkpoint(run / "checkpoints/best.pt")
    old = dict(checkpoint["model_config"])
    del old["input_norm"]
    config = RunConfig.model_validate(checkpoint["config"])
    torch.manual_seed(0)
    net = SpeechModel(16, 29, config.model.model_copy(update={"input_norm": False}))
    save_checkpoint(tmp_path / "old.pt", {**checkpoint, "model_config": old, "model": net.state_dict()})
    loaded, *_ = load_trained(tmp_path / "old.pt")
    assert loaded.input_norm is None
    features, lengths = torch.randn(1, 16, 40), torch.tensor([40])
    torch.testing.assert_close(loaded(features, lengths)[0], net.eval()(features, lengths)[0])


def test_a_checkpoint_from_before_valid_seed_keeps_the_speakers_it_held_out(speech_run, tmp_path):
    from sparsernn.checkpoint import save_checkpoint
    from sparsernn.train.evaluate import load_trained

    run, _ = speech_run
    checkpoint = load_checkpoint(run / "checkpoints/best.pt")
    old = {**checkpoint["config"], "train": {**checkpoint["config"]["train"], "seed": 3}}
    old["data"] = {k: v for k, v in old["data"].items() if k != "valid_seed"}
    save_checkpoint(tmp_path / "old.pt", {**checkpoint, "config": old})
    assert load_trained(tmp_path / "old.pt")[1].data.valid_seed == 3
    assert load_trained(run / "checkpoints/best.pt")[1].data.valid_seed == 0


def test_interrupted_speech_run_resumes_to_identical_end(tmp_path, speech_config, monkeypatch):
    speech_config["data"].update(freq_masks=1, time_masks=1)  # augmentation must resume exactly too
    config = RunConfig.model_validate(speech_config)
    assert check_resume_is_exact(config, tmp_path, monkeypatch, crash=8) == 6


def test_small_dense_and_distillation(tmp_path, speech_config, speech_run):
    run, _ = speech_run
    best = str(run / "checkpoints/best.pt")
    small = {**speech_config, "prune": {"method": "small_dense", "match_checkpoint": best}}
    train(RunConfig.model_validate(small), tmp_path / "small")
    sizing = json.loads((tmp_path / "small/sizing.json").read_text())
    assert sizing["hidden_size"] < 16 and sizing["embedding_size"] is None
    assert abs(sizing["parameters"] - sizing["target_nonzeros"]) <= abs(
        sizing["parameters_one_size_up"] - sizing["target_nonzeros"])
    distill = {**speech_config, "prune": {"method": "distill", "teacher": str(run / "checkpoints/best.pt"),
                                           "match_checkpoint": str(run / "checkpoints/best.pt")}}
    record = train(RunConfig.model_validate(distill), tmp_path / "distill")
    assert record["step"] == 12 and record["valid_cer"] >= 0
    other_conv = {**distill, "model": {**speech_config["model"], "conv": [
        {"channels": 4, "kernel": [5, 5], "stride": [2, 3]}]}}
    with pytest.raises(Exception, match="convolutions differ"):
        train(RunConfig.model_validate(other_conv), tmp_path / "bad")


def test_non_finite_ctc_losses_are_skipped_and_counted(tmp_path, speech_config, monkeypatch):
    from sparsernn.train import losses

    original = losses.functional.ctc_loss

    def one_infinite(*args, **kwargs):
        out = original(*args, **kwargs)
        if kwargs.get("reduction") == "none" and torch.is_grad_enabled():
            out = out.clone()
            out[0] = float("inf")
        return out

    monkeypatch.setattr(losses.functional, "ctc_loss", one_infinite)
    record = train(RunConfig.model_validate(speech_config), tmp_path / "run")
    assert record["skipped_in_training"] == 12  # one per step
    model = load_checkpoint(tmp_path / "run/checkpoints/last.pt")["model"]
    assert all(torch.isfinite(value).all() for value in model.values())


def test_cli_bad_audio_stops_before_training_or_is_skipped(tmp_path, speech_config, an4_dir, capsys):
    import shutil

    data = tmp_path / "an4"
    shutil.copytree(an4_dir, data)
    broken = sorted((data / "wav/an4_clstk").rglob("*.wav"))[0]
    broken.write_bytes(b"garbage")
    speech_config["data"]["path"] = str(data)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(speech_config))
    assert main(["train", str(config_path), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "an4_train.transcription:" in error and "not a readable WAV file" in error
    assert len(error.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    assert main(["train", str(config_path), "--out", str(tmp_path / "run"), "--on-bad-audio", "skip",
                 "--set", "train.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and broken.name.removesuffix(".wav") in out and "validation CER" in out
    assert main(["evaluate", str(tmp_path / "run/checkpoints/last.pt"), "--beam", "2"]) == 0
    assert "greedy CER" in capsys.readouterr().out
    assert main(["transcribe", str(tmp_path / "run/checkpoints/last.pt"), str(tmp_path / "missing.wav")]) == 2
    assert "missing.wav: audio file not found" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["nemo-flac", "audiofolder-mp3", "librispeech"])
def test_speech_data_as_people_have_it_trains_evaluates_and_transcribes(tmp_path, speech_config, layout,
                                                                       capsys):
    """No conversion step: a NeMo manifest of FLAC files, an audiofolder of MP3s, a LibriSpeech tree."""
    from tests.conftest import write_audiofolder, write_librispeech, write_nemo

    data = tmp_path / "data"
    if layout == "nemo-flac":
        write_nemo(data, ".flac")
        fields = {"kind": "manifest", "path": str(data / "train.json"), "test": str(data / "test.json")}
        audio = data / "audio/test/0-0.flac"
    elif layout == "audiofolder-mp3":
        write_audiofolder(data, ".mp3")
        fields = {"kind": "manifest", "path": str(data / "train"), "test": str(data / "test")}
        audio = data / "test/0_0.mp3"
    else:
        write_librispeech(data)
        fields = {"kind": "librispeech", "path": str(data / "train-clean"), "test": str(data / "test-clean")}
        audio = data / "test-clean/110/7/110-7-0000.flac"
    speech_config["data"].update(fields)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(speech_config))
    assert main(["train", str(config_path), "--out", str(tmp_path / "run"), "--set", "train.epochs=2"]) == 0
    assert "validation CER" in capsys.readouterr().out
    result = evaluate_speech(tmp_path / "run/checkpoints/last.pt", "test", beam=2)
    assert result["utterances"] == 6 and result["skipped"] == 0
    assert main(["transcribe", str(tmp_path / "run/checkpoints/last.pt"), str(audio)]) == 0
    path, text = capsys.readouterr().out.rstrip("\n").split("\t")
    assert path == str(audio) and set(text) <= set(" 'ABCDEFGHIJKLMNOPQRSTUVWXYZ")
