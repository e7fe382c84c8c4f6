"""torchrun environment -> process group (NCCL on GPU, gloo on CPU); single process otherwise."""

from __future__ import annotations

import gc
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistInfo:
    """Reads RANK / WORLD_SIZE / LOCAL_RANK set by torchrun (any number of nodes)."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda but no CUDA device is available")
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return DistInfo(rank, world, local, dev)


def teardown() -> None:
    """Ends the process group; call it after dropping every DDP wrapper. A wrapper still alive
    keeps gloo's worker threads until the interpreter's own shutdown, where they can abort the
    process after a successful run ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # wrappers held only by reference cycles go now, while Python is alive
        dist.destroy_process_group()


def all_gather_object(obj):
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def describe_device(device: str = "auto") -> str:
    """What ``run.device`` resolves to on this machine, in a few words."""
    if (device == "auto" or device == "cuda") and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu: {torch.get_num_threads()} threads"


def params_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
