"""Training on procedural stereo data, with the authors' recipe: sequence loss
over the GRU iterations, AdamW with a one-cycle schedule, gradient clipping at
1.0, frozen 2D batch norm. Runs on the CPU or a CUDA GPU; resumable.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..model import IGEVConfig, RaftConfig, SelectiveIGEV, build_model, save_checkpoint
from ..model.base import SelectiveStereo
from ..model.checkpoint import CheckpointError, load_state, read_state_dict
from .synthetic import SceneConfig, SyntheticStereo

#: Compact configurations for CPU training and inference. Same modules as the
#: released models, narrower (hidden 64 instead of 128) and with two GRU levels;
#: RAFT works at 1/8 instead of 1/4 resolution.
PRESETS: dict[str, RaftConfig | IGEVConfig] = {
    "raft-compact": RaftConfig(hidden_dim=64, encoder_dims=(32, 48, 64), feature_dim=128, n_downsample=3,
                               n_gru_layers=2),
    "igev-compact": IGEVConfig(hidden_dim=64, n_gru_layers=2),
    "raft-full": RaftConfig(),
    "igev-full": IGEVConfig(),
}

#: Loss weights decay by this factor per iteration from the last one backwards,
#: rescaled to any number of iterations as the authors do (RAFT-Stereo, Sec. 3.4).
LOSS_GAMMA = 0.9


@dataclass
class TrainConfig:
    preset: str = "raft-compact"
    steps: int = 2000
    batch_size: int = 4
    crop: tuple[int, int] = (128, 288)
    lr: float = 4e-4
    weight_decay: float = 1e-5
    train_iters: int = 8
    valid_iters: int = 16
    max_disp: int = 192  # IGEV cost volume; also the loss ignores larger ground truth (as released)
    data_max_disparity: float = 96.0
    seed: int = 1234
    val_every: int = 250
    val_samples: int = 16
    device: str = "auto"
    workers: int = 1
    init: str = ""  # start from these weights (a state dict of the preset's architecture), e.g. to fine-tune

    def scene(self) -> SceneConfig:
        return SceneConfig(height=self.crop[0], width=self.crop[1], max_disparity=self.data_max_disparity)


def sequence_loss(predictions: list[torch.Tensor], target: torch.Tensor, max_disp: float,
                  init: torch.Tensor | None = None) -> torch.Tensor:
    """Exponentially weighted L1 over the per-iteration predictions (later ones
    weigh more), plus smooth L1 on IGEV's initial disparity.

    predictions: list of B x 1 x H x W; target: B x 1 x H x W (NaN = unknown).
    """
    valid = torch.isfinite(target) & (target < max_disp)
    if not valid.any():
        raise ValueError("no valid ground-truth pixel in the batch")
    target = torch.where(valid, target, torch.zeros_like(target))
    n = len(predictions)
    gamma = LOSS_GAMMA ** (15 / (n - 1)) if n > 1 else 1.0
    loss = sum(gamma ** (n - i - 1) * (pred - target).abs()[valid].mean() for i, pred in enumerate(predictions))
    if init is not None:
        loss = loss + F.smooth_l1_loss(init[valid], target[valid])
    return loss


def freeze_batch_norm(model: torch.nn.Module) -> None:
    """Keep 2D batch norm in eval mode while training (as released): statistics
    from small batches would be noise."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()


class SyntheticBatches(Dataset):
    """Samples ``start``, ``start + 1``, ... of a SyntheticStereo as tensors."""

    def __init__(self, data: SyntheticStereo, start: int, length: int) -> None:
        self.data, self.start, self.length = data, start, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.data[self.start + i]
        to_chw = lambda im: torch.from_numpy(im).permute(2, 0, 1).float()  # noqa: E731
        return to_chw(s.left), to_chw(s.right), torch.from_numpy(s.disparity)[None]


def forward_for_loss(model: SelectiveStereo, left: torch.Tensor, right: torch.Tensor, iters: int,
                     max_disp: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    if isinstance(model, SelectiveIGEV):
        pred = model(left, right, iters=iters, output_iters=range(1, iters + 1), max_disp=max_disp,
                     return_init=True)
    else:
        pred = model(left, right, iters=iters, output_iters=range(1, iters + 1))
    return pred.disparities, pred.init_disp


def train_step(model: SelectiveStereo, optimizer: torch.optim.Optimizer, batch, iters: int,
               max_disp: int) -> tuple[float, float]:
    """One optimisation step; returns (loss, end-point error of the last iteration)."""
    left, right, target = batch
    model.train()
    freeze_batch_norm(model)
    predictions, init = forward_for_loss(model, left, right, iters, max_disp)
    loss = sequence_loss(predictions, target, max_disp, init)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    with torch.no_grad():
        valid = torch.isfinite(target) & (target < max_disp)
        epe = (predictions[-1] - target).abs()[valid].mean().item()
    return loss.item(), epe


@torch.no_grad()
def validate(model: SelectiveStereo, batches: list, iters: int, max_disp: int) -> dict[str, float]:
    model.eval()
    errors = []
    for left, right, target in batches:
        kwargs = {"max_disp": max_disp} if isinstance(model, SelectiveIGEV) else {}
        pred = model(left, right, iters=iters, **kwargs).final
        valid = torch.isfinite(target)
        errors.append((pred - target).abs()[valid])
    err = torch.cat(errors)
    return {"val_epe": err.mean().item(), "val_bad2": 100.0 * (err > 2).float().mean().item()}


@dataclass
class Trainer:
    """Owns the model, optimiser, schedule, logs and checkpoints of one run folder."""

    config: TrainConfig
    out_dir: Path
    model: SelectiveStereo = field(init=False)
    step: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        from ..inference import resolve_device

        cfg = self.config
        if cfg.preset not in PRESETS:
            raise ValueError(f"unknown preset {cfg.preset!r}; choose from {', '.join(PRESETS)}")
        if cfg.crop[0] % 32 or cfg.crop[1] % 32:
            raise ValueError(f"crop {cfg.crop} must be multiples of 32")
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.model = build_model(PRESETS[cfg.preset])
        if cfg.init:
            try:
                load_state(self.model, read_state_dict(cfg.init))
            except CheckpointError as err:
                raise CheckpointError(f"--init {cfg.init} does not match preset {cfg.preset}: {err}") from None
        self.model.to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           eps=1e-8)
        # One-cycle as released: 1% warm-up, linear decay, 100 steps of slack.
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, cfg.lr, cfg.steps + 100, pct_start=0.01, cycle_momentum=False,
            anneal_strategy="linear")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.out_dir / "train_state.pt"
        self.data = SyntheticStereo(cfg.scene(), seed=cfg.seed)
        # Validation scenes come from another seed: never seen in training.
        val = SyntheticBatches(SyntheticStereo(cfg.scene(), seed=cfg.seed + 1_000_003), 0, cfg.val_samples)
        self.val_batches = [tuple(t.to(self.device) for t in b)
                            for b in DataLoader(val, batch_size=cfg.batch_size)]
        self.elapsed = 0.0

    def resume(self) -> bool:
        if not self.state_path.is_file():
            return False
        state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        if state["config"] != json.loads(json.dumps(asdict(self.config))):
            raise ValueError(f"{self.state_path} was written with another configuration; use a new --out")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        return True

    def save(self) -> None:
        state = {"config": json.loads(json.dumps(asdict(self.config))), "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "step": self.step, "elapsed": self.elapsed}
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.state_path)
        save_checkpoint(self.model, self.out_dir / "model.pth")

    def _log(self, name: str, row: dict) -> None:
        path = self.out_dir / name
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(key, value, row["step"])

    def run(self, progress: bool = True) -> dict[str, float]:
        try:
            from tqdm import tqdm
        except ImportError:
            raise ValueError("training needs tqdm: pip install 'sgru_ros[train]'") from None

        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.out_dir / "tensorboard"))
        except ImportError:  # TensorBoard is optional; the CSV logs are always written
            self.tb = None
        cfg = self.config
        (self.out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        remaining = cfg.steps - self.step
        loader = DataLoader(SyntheticBatches(self.data, self.step * cfg.batch_size, remaining * cfg.batch_size),
                            batch_size=cfg.batch_size, num_workers=cfg.workers, persistent_workers=False)
        metrics: dict[str, float] = {}
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True)
        losses: list[float] = []
        start = time.perf_counter() - self.elapsed
        for batch in loader:
            batch = tuple(t.to(self.device) for t in batch)
            loss, epe = train_step(self.model, self.optimizer, batch, cfg.train_iters, cfg.max_disp)
            if not math.isfinite(loss):
                raise RuntimeError(f"loss became {loss} at step {self.step}; lower --lr")
            self.scheduler.step()
            self.step += 1
            self.elapsed = time.perf_counter() - start
            losses.append(loss)
            self._log("train_log.csv", {"step": self.step, "loss": loss, "epe": epe,
                                        "lr": self.scheduler.get_last_lr()[0], "elapsed_s": round(self.elapsed, 1)})
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", epe=f"{epe:.2f}")
            bar.update(1)
            if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                metrics = validate(self.model, self.val_batches, cfg.valid_iters, cfg.max_disp)
                self._log("val_log.csv", {"step": self.step, **metrics})
                bar.write(f"step {self.step}: val EPE {metrics['val_epe']:.3f} px, "
                          f"bad-2 {metrics['val_bad2']:.2f}% ({self.elapsed / 60:.1f} min)")
                self.save()
        bar.close()
        self.save()
        if self.tb is not None:
            self.tb.close()
        return metrics
