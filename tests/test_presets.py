from pathlib import Path

import pytest

from sparsernn.config import load_config
from sparsernn.prune import NoSchedule
from sparsernn.train.methods import prune_schedule

PRESETS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_validates_and_builds_its_schedule(path):
    config = load_config(path)
    steps_per_epoch = 1327 if path.stem.startswith("ptb") else 109  # PTB at 20x35; AN4 870 / 8
    schedule = prune_schedule(config.prune, config.train.epochs, steps_per_epoch)
    assert isinstance(schedule, NoSchedule) == (config.prune.method in ("dense", "small_dense", "distill"))
    assert config.data.path == Path("../shared/data") / path.stem.split("-")[0]


def test_presets_exist():
    from scripts.presets import PRESETS as ORDERED

    assert {p.stem for p in PRESETS} == set(ORDERED["ptb"]) | set(ORDERED["an4"])
