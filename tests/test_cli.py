import subprocess
import sys

import pytest
import yaml

from sparsernn.cli import main


def write_config(tmp_path, raw):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_train_print_config_and_overrides(tmp_path, tiny_config, capsys):
    config = write_config(tmp_path, tiny_config)
    assert main(["train", config, "--print-config", "--set", "train.max_steps=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["max_steps"] == 7 and printed["model"]["cell"] == "lstm"
    assert main(["train", config, "--out", str(tmp_path / "run"), "--set", "train.max_steps=12"]) == 0
    assert "step 12: validation perplexity" in capsys.readouterr().out
    assert main(["train", config, "--out", str(tmp_path / "run"), "--resume",
                 "--set", "train.max_steps=16"]) == 0
    assert "step 16" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "run/checkpoints/last.pt"), "--split", "valid"]) == 0
    printed = capsys.readouterr().out
    last_eval = (tmp_path / "run/metrics.jsonl").read_text().splitlines()[-1]
    assert f"perplexity {yaml.safe_load(last_eval)['valid_perplexity']:.2f}" in printed


def test_user_errors_exit_2_with_one_message(tmp_path, tiny_config, capsys):
    config = write_config(tmp_path, tiny_config)
    cases = [
        (["train", config, "--set", "train.lr_rate=1"], "train.lr_rate: unknown key"),
        (["train", config, "--out", "x", "--set", f"data.path={tmp_path / 'none'}"],
         "none: data directory not found"),
        (["train", config, "--out", str(tmp_path / "fresh"), "--resume"], "last.pt: checkpoint not found"),
        (["train", str(tmp_path / "missing.yaml")], "missing.yaml: cannot read config"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_corrupt_checkpoint_from_the_shell(tmp_path, tiny_config):
    config = write_config(tmp_path, tiny_config)
    (tmp_path / "run/checkpoints").mkdir(parents=True)
    (tmp_path / "run/checkpoints/last.pt").write_bytes(b"not a checkpoint")
    result = subprocess.run([sys.executable, "-m", "sparsernn", "train", config, "--out",
                             str(tmp_path / "run"), "--resume"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "last.pt: not a readable sparsernn checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_prints_size_and_bad_model_file_exits_2(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["export", str(trained_checkpoint), "-o", str(out), "--values", "fp16"]) == 0
    assert "of dense fp32" in capsys.readouterr().out
    out.write_bytes(out.read_bytes()[:50])
    from sparsernn.engine import LanguageModelEngine
    from sparsernn.export import ExportError

    with pytest.raises(ExportError, match="m.safetensors"):
        LanguageModelEngine(out)
    assert main(["export", str(tmp_path / "absent.pt"), "-o", str(out)]) == 2


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "sparsernn", "--help"], capture_output=True,
                            text=True, check=True)
    assert "train" in result.stdout and "export" in result.stdout
    result = subprocess.run([sys.executable, "-c", "import sparsernn, sys; "
                             "print(sorted(m for m in sys.modules if m.startswith('sparsernn')))"],
                            capture_output=True, text=True, check=True)
    assert "sparsernn.engine" not in result.stdout  # importing does no work
    result = subprocess.run([sys.executable, "-c", "import sparsernn; print(sparsernn.sparsify.__module__)"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "sparsernn.engine.modules"  # found on first use
