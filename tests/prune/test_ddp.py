"""Two gloo processes under DDP end with identical weights and masks, without mask communication."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from sparsernn.prune import AGPSchedule, NarangSchedule, Pruner
from tests.prune.conftest import LSTMTagger, train_step


def _worker(rank, world_size, store_path, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=world_size)
    try:
        torch.manual_seed(rank)  # different initial weights: DDP's broadcast must align them
        model = DistributedDataParallel(LSTMTagger())
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        pruner = Pruner(model, {"recurrent": NarangSchedule(start=5, ramp=15, end=30, freq=5,
                                                            sparsity=0.8),
                                "linear": AGPSchedule(start=5, end=30, freq=5, sparsity=0.6)},
                        optimizer, per_gate=True)
        for step in range(1, 41):
            train_step(model, optimizer, pruner, 2 * step + rank)  # each rank its own shard
        torch.save({"model": model.module.state_dict(), "masks": pruner.masks,
                    "sparsity": pruner.sparsity()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_end_identical(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert rank0["sparsity"] > 0.5
    assert rank0["model"].keys() == rank1["model"].keys()
    for name, value in rank0["model"].items():
        assert torch.equal(value, rank1["model"][name]), name
    for name, mask in rank0["masks"].items():
        assert torch.equal(mask, rank1["masks"][name]), name
