"""Multi-process training under ``torchrun`` with PyTorch DDP (gloo on CPU, nccl on GPU).

Each rank trains on its own contiguous shard of the training stream; DDP all-reduces gradients, so
parameters, and therefore the Pruner's masks, stay identical on every rank without extra
communication. Only rank 0 writes logs and checkpoints; per-rank state (hidden states, RNG) is
gathered into the checkpoint so that ``--resume`` continues every rank exactly.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    joined: bool = False  # setup() created the process group, so leave() destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup() -> Distributed:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else a single process."""
    cuda = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed(device=torch.device("cuda" if cuda else "cpu"))
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Distributed(dist.get_rank(), dist.get_world_size(), device, joined)


def leave(info: Distributed) -> None:
    """Destroy the process group setup() created, once every rank got here. A gloo group left for
    the interpreter's exit to tear down can abort the process ("terminate called without an active
    exception") after a run that succeeded."""
    if info.joined:
        dist.barrier()
        dist.destroy_process_group()


def shard(tokens: torch.Tensor, info: Distributed) -> torch.Tensor:
    """This rank's contiguous, equal-length share of a token stream."""
    length = len(tokens) // info.world_size
    return tokens[info.rank * length:(info.rank + 1) * length]


def gather(value: object, info: Distributed) -> list:
    """Every rank's ``value``, in rank order (a one-element list without DDP)."""
    if not info.enabled:
        return [value]
    values = [None] * info.world_size
    dist.all_gather_object(values, value)
    return values


def broadcast_buffers(model: torch.nn.Module, info: Distributed) -> None:
    """Copy rank 0's buffers (batch-norm running statistics, which each rank updates from its own
    batches) to every rank."""
    if info.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """A digest of tensors' exact bytes, to check that ranks agree bit for bit."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
