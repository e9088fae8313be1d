from pathlib import Path

import pytest

from sparsernn.config import load_config
from sparsernn.prune import NoSchedule
from sparsernn.train.methods import prune_schedule

PRESETS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_validates_and_builds_its_schedule(path):
    config = load_config(path)
    schedule = prune_schedule(config.prune, config.train.epochs, steps_per_epoch=1327)  # PTB, 20x35
    assert isinstance(schedule, NoSchedule) == (config.prune.method in ("dense", "small_dense", "distill"))
    assert config.data.path == Path("../shared/data/ptb")


def test_presets_exist():
    assert {p.stem for p in PRESETS} == {"ptb-dense", "ptb-narang90", "ptb-agp90", "ptb-oneshot90",
                                        "ptb-small-dense", "ptb-distill"}
