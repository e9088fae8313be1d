from pathlib import Path

import pytest

from sparsernn.config import load_config
from sparsernn.prune import NoSchedule
from sparsernn.train.methods import prune_schedule

PRESETS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_validates_and_builds_its_schedule(path):
    config = load_config(path)
    task = path.stem.split("-")[0]
    steps_per_epoch = {"ptb": 1327, "an4": 109, "mt": 454}[task]  # PTB at 20x35; AN4 870 / 8; 29000 / 64
    schedule = prune_schedule(config.prune, config.train.epochs, steps_per_epoch)
    assert isinstance(schedule, NoSchedule) == (config.prune.method in ("dense", "small_dense", "distill"))
    folder = {"ptb": "ptb", "an4": "an4", "mt": "multi30k/raw"}[task]
    assert config.data.path == Path("../shared/data") / folder


def test_presets_exist():
    from scripts.presets import PRESETS as ORDERED

    assert {p.stem for p in PRESETS} == set(ORDERED["ptb"]) | set(ORDERED["an4"]) | set(ORDERED["mt"])
