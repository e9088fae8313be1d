import pytest
import yaml

from sparsernn.config import ConfigError, load_config


def write(tmp_path, raw):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_defaults_and_overrides(tmp_path, tiny_config):
    config = load_config(write(tmp_path, tiny_config), ["train.max_steps=50", "model.cell=gru",
                                                         "prune.groups=[recurrent]"])
    assert config.train.max_steps == 50 and config.model.cell == "gru"
    assert config.prune.groups == ("recurrent",)
    assert config.train.clip == 0.25  # default


@pytest.mark.parametrize("override, message", [
    (["train.learning_rate=1"], "train.learning_rate: unknown key"),
    (["model.dropout=1.5"], "model.dropout: Input should be less than 1"),
    (["prune.method=magic"],
     "prune.method: Input should be 'dense', 'narang', 'agp', 'oneshot', 'small_dense' or 'distill'"),
    (["prune.groups=[attention]"], "unknown groups ['attention']"),
    (["bogus.key=1"], "bogus: unknown key"),
    (["train"], "expected section.key=value"),
])
def test_errors_name_the_key(tmp_path, tiny_config, override, message):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, tiny_config), override)
    assert message in str(error.value)
    assert "config.yaml" in str(error.value) or "--set" in str(error.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read config"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="data.path: Field required"):
        load_config(None, ["train.epochs=1"])
