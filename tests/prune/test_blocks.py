"""Block pruning: whole r x c blocks go together, with every schedule."""

import pytest
import torch
from torch import nn

from sparsernn.prune import AGPSchedule, NarangSchedule, OneShotSchedule, Pruner


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(8, 16)  # weight_ih (48, 8), weight_hh (48, 16)
        self.head = nn.Linear(16, 24)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def block_states(mask: torch.Tensor, r: int, c: int) -> torch.Tensor:
    """Per block: the set of distinct mask values inside it (one value when the block is whole)."""
    rows, cols = mask.shape
    tiles = mask.reshape(rows // r, r, cols // c, c)
    return tiles.amax(dim=(1, 3)) - tiles.amin(dim=(1, 3))


def train(pruner, model, optimizer, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(5, 3, 8)).pow(2).mean().backward()
        optimizer.step()
        pruner.step()


@pytest.mark.parametrize("block", [(4, 2), (8, 1), (1, 4)])
@pytest.mark.parametrize("schedule", [
    AGPSchedule(start=2, end=20, freq=2, sparsity=0.75),
    OneShotSchedule(at=10, sparsity=0.75),
    NarangSchedule(start=2, ramp=12, end=20, freq=2, sparsity=0.75, q_from="update"),
])
def test_masks_are_whole_blocks_at_the_target(block, schedule):
    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = Pruner(model, schedule, optimizer, block=block, per_gate=True)
    train(pruner, model, optimizer, 25)
    for w in pruner.weights:
        assert not block_states(w.mask, *block).any(), w.name  # every block all kept or all pruned
        assert bool((w.param[w.mask == 0] == 0).all())
    if not isinstance(schedule, NarangSchedule):  # top-k: exactly 75% of each gate's blocks
        for w in pruner.weights:
            per_gate = w.mask.view(w.blocks, -1).shape[1]
            assert int((w.mask == 0).sum()) == w.blocks * round(0.75 * per_gate / (block[0] * block[1])) \
                * block[0] * block[1]
    else:
        assert pruner.sparsity() == pytest.approx(0.75, abs=0.03)


def test_threshold_keeps_blocks_whose_largest_magnitude_exceeds_it():
    torch.manual_seed(1)
    model = nn.Linear(6, 8)
    pruner = Pruner(model, NarangSchedule(start=0, ramp=5, end=10, freq=1, theta=0.1, phi=0.1),
                    block=(2, 3))
    weight = model.weight.detach().clone()
    pruner.step()
    threshold = pruner.thresholds()["linear"]
    assert 0.0 < threshold < float(weight.abs().max())
    for i in range(0, 8, 2):
        for j in range(0, 6, 3):
            tile = weight[i:i + 2, j:j + 3]
            expected = float(tile.abs().max() > threshold)
            assert bool((model.weight[i:i + 2, j:j + 3] == tile * expected).all())


def test_block_that_does_not_tile_names_the_weight():
    with pytest.raises(ValueError, match=r"rnn.weight_ih_l0 of shape \(48, 8\) in 3 gate blocks"):
        Pruner(Tiny(), AGPSchedule(start=1, end=2, sparsity=0.5), block=(32, 1), per_gate=True)


def test_state_dict_records_the_block():
    pruner = Pruner(Tiny(), AGPSchedule(start=1, end=2, sparsity=0.5), block=(8, 1))
    other = Pruner(Tiny(), AGPSchedule(start=1, end=2, sparsity=0.5))
    with pytest.raises(ValueError, match="block"):
        other.load_state_dict(pruner.state_dict())
