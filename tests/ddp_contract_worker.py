"""One rank of tests/test_train_contract.py's DDP check (run under torchrun, gloo on CPU).

Usage: torchrun --nproc_per_node N ddp_contract_worker.py IN.pt OUT_DIR
IN.pt holds the config overrides and global batches; rank r trains on its 1/N slice of each
and writes OUT_DIR/rank{r}.pt (centre, teacher, last lr, world size).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mcssl.config import load_config
from mcssl.train import Trainer
from mcssl.train.distributed import teardown


def main(inp: str, out: str) -> None:
    data = torch.load(inp, weights_only=True)
    tr = Trainer(load_config("smoke", data["overrides"]), Path(out) / "ddp")
    rank, world = tr.dist.rank, tr.dist.world
    for x in data["batches"]:
        n = x.shape[0] // world
        tr.train_step({"global": [x[rank * n : (rank + 1) * n]], "local": [], "failed": 0})
    result = {
        "world": world,
        "center": tr.patch_loss.center.clone(),
        "teacher": tr.teacher.state_dict(),
        "lr": tr.optimizer.param_groups[0]["lr"],
    }
    torch.save(result, Path(out) / f"rank{rank}.pt")
    del tr  # its DDP wrapper goes before the process group
    teardown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
