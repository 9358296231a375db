"""A tiny regression trained through the real Trainer; the resume and DDP tests run it as a script.

usage: python toy_train.py CKPT_DIR OUT_JSON [SECONDS_PER_SAMPLE]
"""

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from binaural_lab.training import TrainConfig, Trainer


class Toy(Dataset):
    def __init__(self, n: int, delay: float = 0.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
        self.delay = delay
        self.seen: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        time.sleep(self.delay)
        self.seen.append(i)
        return {"x": self.x[i], "y": self.y[i], "i": torch.tensor(i)}


class ToyTask:
    def training_loss(self, model, batch, epoch):
        loss = nn.functional.mse_loss(model(batch["x"]).squeeze(-1), batch["y"])
        return loss, {"mse": loss.item()}

    def evaluate(self, model, loader, epoch):
        errs = [nn.functional.mse_loss(model(b["x"]).squeeze(-1), b["y"]).item() for b in loader]
        return {"mse": sum(errs) / len(errs)}


def main(ckpt_dir: str, out_json: str, delay: float = 0.0) -> None:
    cfg = TrainConfig(epochs=4, batch_size=4, lr=0.05, checkpoint_every=2, seed=3, ema_decay=0.5)
    trainer = Trainer(cfg, Path(ckpt_dir), fingerprint={"toy": 1})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.1), nn.Linear(8, 1))
    train = Toy(64, delay)
    result = trainer.fit(model, train, Toy(16, seed=1), ToyTask())
    record = {
        "rank": trainer.rank,
        "world": trainer.world,
        "seen": sorted(set(train.seen)),
        "resumed_from_step": result.resumed_from_step,
        "weights": torch.cat([p.detach().flatten() for p in result.model.parameters()]).tolist(),
        "history": result.history,
    }
    Path(f"{out_json}.rank{trainer.rank}").write_text(json.dumps(record))
    if trainer.is_main:
        Path(out_json).write_text(json.dumps(record))
    if os.environ.get("WORLD_SIZE"):
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
