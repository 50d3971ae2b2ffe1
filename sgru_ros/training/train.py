"""Training on procedural stereo data, with the authors' recipe: sequence loss
over the GRU iterations, AdamW with a one-cycle schedule, gradient clipping at
1.0, frozen 2D batch norm. Runs on the CPU or a CUDA GPU; resumable.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..model import IGEVConfig, RaftConfig, build_model, save_checkpoint
from ..model.base import SelectiveStereo
from ..model.checkpoint import CheckpointError, load_state, read_state_dict
from .step import TrainStep, edge_band, has_ground_truth, load_optimizer_state, make_optimizer
from .synthetic import SceneConfig, SyntheticStereo, existing_photo_dirs

#: Compact configurations for CPU training and inference. Same modules as the
#: released models, narrower (hidden 64 instead of 128) and with two GRU levels.
#: "raft-compact" works at 1/4 resolution like the authors' models, with the
#: encoders' cheaper stride layout (stem first, see ``stage_strides``);
#: "raft-compact8" at 1/8 (the first bundled model): half the GRU cost, but
#: 1/8 cannot hold thin structures and depth edges (the ground truth itself,
#: taken to 1/8 and back, scores ~10 % bad-2 on Middlebury Motorcycle).
PRESETS: dict[str, RaftConfig | IGEVConfig] = {
    "raft-compact": RaftConfig(hidden_dim=64, encoder_dims=(32, 48, 64), feature_dim=128, n_downsample=2,
                               n_gru_layers=2, early_downsample=True),
    "raft-compact8": RaftConfig(hidden_dim=64, encoder_dims=(32, 48, 64), feature_dim=128, n_downsample=3,
                                n_gru_layers=2),
    "igev-compact": IGEVConfig(hidden_dim=64, n_gru_layers=2),
    "raft-full": RaftConfig(),
    "igev-full": IGEVConfig(),
}

#: TrainConfig fields a resumed run may change: they do not change what is
#: learned (sample i is a pure function of seed and i, whichever process makes
#: it; ``init`` only matters at step 0).
RUN_RESOURCES = frozenset({"device", "workers", "init", "cuda_graphs"})


def _option(default, help: str, **kwargs):
    """A TrainConfig field with its help text (``sgru-stereo train`` builds its options from these)."""
    if callable(default):
        return field(default_factory=default, metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


def add_config_options(parser: argparse.ArgumentParser, config_type: type, required: tuple[str, ...] = (),
                       flags: dict[str, str] | None = None, choices: dict[str, list] | None = None) -> None:
    """An option for each field of a config dataclass made with ``_option`` (``batch_size`` ->
    ``--batch-size``, or ``flags[name]``), with the field's help text and default; a bool field is a
    ``--x/--no-x`` switch, a tuple field takes as many values as its type names (``tuple[int, ...]``: one or
    more; a field in ``flags``: one per repetition of the option). Options left out stay None in the
    namespace, so that ``config_from_options`` keeps the dataclass's own default."""
    hints = typing.get_type_hints(config_type)
    for item in fields(config_type):
        default = item.default_factory() if item.default is MISSING else item.default
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        kwargs = dict(dest=item.name, default=None, required=item.name in required,
                      help=f"{item.metadata['help']} (default {shown})" if shown not in ("", ()) else
                      item.metadata["help"])
        kind = hints[item.name]
        flag = (flags or {}).get(item.name, "--" + item.name.replace("_", "-"))
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            kwargs["type"] = typing.get_args(kind)[0]
            if item.name in (flags or {}):
                kwargs["action"] = "append"
            else:
                kwargs["nargs"] = "+" if ... in typing.get_args(kind) else len(typing.get_args(kind))
        else:
            kwargs["type"] = kind
        if item.name in (choices or {}):
            kwargs["choices"] = choices[item.name]
        parser.add_argument(flag, **kwargs)


def config_from_options(args: argparse.Namespace, config_type: type):
    """The config dataclass the options of ``add_config_options`` give (the dataclass's defaults where an
    option was left out)."""
    values = {item.name: getattr(args, item.name) for item in fields(config_type)
              if getattr(args, item.name, None) is not None}
    return config_type(**{name: tuple(v) if isinstance(v, list) else v for name, v in values.items()})


@dataclass
class TrainConfig:
    """One run's recipe. Everything here is fixed for the run's life: a resumed
    run must have the same values (the schedule, data and validation depend on them),
    except ``RUN_RESOURCES``."""

    preset: str = _option("raft-compact", "architecture: " + ", ".join(PRESETS))
    steps: int = _option(2000, "optimisation steps: the one-cycle schedule's length (a resumed run continues "
                               "the same curve)")
    batch_size: int = _option(4, "scenes per step")
    crop: tuple[int, int] = _option((128, 288), "scene size H W, multiples of 32")
    lr: float = _option(4e-4, "peak learning rate")
    weight_decay: float = _option(1e-5, "AdamW weight decay")
    train_iters: int = _option(8, "GRU iterations per step")
    valid_iters: int = _option(8, "iterations at validation, the deployed count (multiples of it are reported too)")
    max_disp: int = _option(192, "IGEV cost-volume range; the loss also ignores larger ground truth (as released)")
    data_max_disparity: float = _option(96.0, "largest disparity in the scenes")
    seed: int = _option(1234, "data and initialisation seed")
    val_every: int = _option(250, "validate and save every N steps")
    val_samples: int = _option(48, "validation scenes (drawn past every training scene)")
    device: str = _option("auto", "auto, cpu, cuda, cuda:N")
    workers: int = _option(1, "data-generation processes")
    init: str = _option("", "start from these weights (same widths as the preset), e.g. to fine-tune; a 1/8 "
                            "model's weights also start a 1/4 model of the same widths")
    warm_start: float = _option(0.25, "fraction of batches started from a noisy, holed prior: the network learns "
                                      "to refine an estimate instead of erasing it")
    sgbm_prior: float = _option(0.0, "fraction of batches started from OpenCV SGBM's map of the scene (holes "
                                     "filled), as init sgbm runs; with it, validation also scores that mode")
    sgbm_val_iters: int = _option(4, "iterations at which the init-sgbm mode is validated")
    first_sample: int = _option(0, "index of the first training scene: a later stage started with --init from an "
                                   "earlier run begins past the scenes that run saw")
    train_iters_max: int = _option(0, "above train_iters: draw each step's iteration count from "
                                      "train_iters..this, so more iterations at run time do not hurt (0: fixed)")
    val_multiples: tuple[int, ...] = _option((1, 2), "validate at valid_iters times each of these")
    edge_weight: float = _option(1.0, "loss weight of pixels within 3 px of a depth edge (the edges region of the "
                                      "evaluation), relative to the others")
    cuda_graphs: bool = _option(False, "on a CUDA GPU, replay each training step as one CUDA graph (a fixed "
                                       "iteration count; the same steps, without the launch overhead)")
    best_over_multiples: bool = _option(False, "keep best.pth by the worst bad-2 over val_multiples instead of "
                                               "bad-2 at valid_iters")
    photo_dirs: tuple[str, ...] = _option(existing_photo_dirs, "folders of texture photographs (default: "
                                                               "Debian's mate-backgrounds nature photos when "
                                                               "installed)")

    def scene(self) -> SceneConfig:
        return SceneConfig(height=self.crop[0], width=self.crop[1], max_disparity=self.data_max_disparity,
                           photo_dirs=tuple(self.photo_dirs))


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


def warm_start_prior(target: torch.Tensor, factor: int, generator: torch.Generator) -> torch.Tensor:
    """A plausible previous estimate from the ground truth, at the working resolution.

    target: B x 1 x H x W (NaN = unknown) -> B x 1 x H/factor x W/factor in
    working-resolution pixels, like ``StereoEstimator`` passes ``disp_init``:
    a smooth offset of up to +-3 px (a drifted previous frame or a biased prior),
    per-pixel noise, and holes set to 0 (what the inference API makes of
    missing values), as a classical matcher or a tracked frame would give.
    """
    b, _, h, w = target.shape
    rand = lambda *shape: torch.rand(*shape, generator=generator, device="cpu").to(target.device)  # noqa: E731
    prior = torch.nan_to_num(target, nan=0.0)
    offset = F.interpolate((rand(b, 1, 4, 6) * 2 - 1) * 3 * rand(b, 1, 1, 1), size=(h, w), mode="bilinear",
                           align_corners=False)
    noise = torch.randn(b, 1, h, w, generator=generator).to(target.device) * 2 * rand(b, 1, 1, 1)
    prior = (prior + offset + noise).clamp(min=0)
    holes = F.interpolate(rand(b, 1, h // 16, w // 16), size=(h, w), mode="nearest") < 0.3 * rand(b, 1, 1, 1)
    prior = torch.where(holes, torch.zeros_like(prior), prior)
    return at_working_resolution(prior, factor)


def at_working_resolution(disparity: torch.Tensor, factor: int) -> torch.Tensor:
    """B x 1 x H x W disparity in input pixels -> B x 1 x H/factor x W/factor in working-resolution pixels, as
    ``StereoEstimator`` passes ``disp_init``."""
    h, w = disparity.shape[-2:]
    return F.interpolate(disparity, size=(h // factor, w // factor), mode="area") / factor


def sgbm_batch_config(max_disparity: float):
    """The ``evaluation.SGBMConfig`` of ``sgbm_batch_prior``: the scenes' whole disparity range."""
    from ..evaluation import SGBMConfig

    return SGBMConfig(num_disparities=16 * math.ceil(max_disparity / 16))


def sgbm_batch_prior(left: torch.Tensor, right: torch.Tensor, factor: int, max_disparity: float) -> torch.Tensor:
    """``evaluation.sgbm_prior`` of each pair of a batch (B x 3 x H x W, 0..255), searching the scenes' whole
    disparity range, at the working resolution (what ``init: sgbm`` gives the network at run time)."""
    from ..evaluation import sgbm_prior

    config = sgbm_batch_config(max_disparity)
    to_image = lambda t: t.permute(1, 2, 0).clamp(0, 255).round().byte().cpu().numpy()  # noqa: E731
    priors = [torch.from_numpy(sgbm_prior(to_image(a), to_image(b), config)) for a, b in zip(left, right)]
    return at_working_resolution(torch.stack(priors)[:, None].to(left.device), factor)


def multiple_suffix(multiple: int) -> str:
    """Metric-name suffix for ``multiple`` times the deployed iterations: "", "_x2", "_x4"."""
    return "" if multiple == 1 else f"_x{multiple}"


@torch.no_grad()
def validate(model: SelectiveStereo, batches: list, iters: int, max_disp: int,
             multiples: tuple[int, ...] = (1, 2), priors: list[torch.Tensor] | None = None,
             prefix: str = "val") -> dict[str, float]:
    """End-point error and bad-2 (%) at ``iters`` times each of ``multiples`` (more
    iterations must not make it worse), over the validation batches, from one
    pass of the largest count. Keys: val_epe, val_bad2, val_epe_x2, ... (``prefix`` instead of val), and
    val_bad2_edges: bad-2 at ``iters`` within 3 px of a depth edge (``edge_band``, the evaluation's region).
    priors: each batch's starting disparity at the working resolution (``sgbm_batch_prior``)."""
    model.eval()
    counts = sorted({iters * m for m in multiples})
    errors: dict[int, list[torch.Tensor]] = {k: [] for k in counts}
    edge_errors = []
    for i, (left, right, target) in enumerate(batches):
        pred = model(left, right, iters=counts[-1], output_iters=counts, max_disp=max_disp,
                     disp_init=priors[i] if priors is not None else None)
        valid = torch.isfinite(target)
        for k, disparity in zip(pred.iterations, pred.disparities):
            errors[k].append((disparity - target).abs()[valid])
            if k == iters:
                edge_errors.append((disparity - target).abs()[edge_band(target)])
    metrics = {}
    for multiple in sorted(set(multiples)):
        err = torch.cat(errors[iters * multiple])
        metrics[f"{prefix}_epe{multiple_suffix(multiple)}"] = err.mean().item()
        metrics[f"{prefix}_bad2{multiple_suffix(multiple)}"] = 100.0 * (err > 2).float().mean().item()
    metrics[f"{prefix}_bad2_edges"] = 100.0 * (torch.cat(edge_errors) > 2).float().mean().item()
    return metrics


def worst_bad2(metrics: dict[str, float], multiples: tuple[int, ...] = (1, 2, 4)) -> float:
    """The worst bad-2 over the validated multiples of the deployed iterations (``validate``'s keys): from
    stage 3 on, what best.pth minimises, so that more iterations at run time do not hurt."""
    return max(metrics[f"val_bad2{multiple_suffix(m)}"] for m in multiples)


def write_val_log(path: Path, rows: list[dict[str, float]]) -> None:
    """A stage's validations as CSV: a column for each key of any row (in order of appearance), the step as
    an integer, the rest with 4 decimals, empty where a row has no such key."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w") as f:
        f.write(",".join(columns) + "\n")
        f.writelines(",".join(str(row[k]) if k == "step" else f"{row[k]:.4f}" if k in row else "" for k in columns)
                     + "\n" for row in rows)


def transfer_state(model: SelectiveStereo, state: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state`` into ``model``, also across working resolutions.

    A 1/8 and a 1/4 Selective-RAFT of the same widths share every weight except
    the last conv of the upsampling-mask head (9 x factor^2 outputs). That conv
    is zeroed: every fine pixel then mixes its 3x3 coarse neighbours equally,
    a smooth upsampling the training sharpens. An edge refinement (``edge_refine.*``, the bundled
    model's) is left out when ``model`` has none: it was trained on the network as it was, so the edge
    stage (``training.edges``) runs again after training. Anything else that does not fit
    raises CheckpointError. Returns the names that were not taken from ``state``.
    """
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not k.startswith("edge_refine.")}
    mask_head = ("update_block.mask.2.weight", "update_block.mask.2.bias")
    markers = tuple(k for k in expected if k.endswith("stage_strides"))
    adapted = [k for k in mask_head if k in state and k in expected and state[k].shape != expected[k].shape]
    if adapted:
        state = {k: v for k, v in state.items() if k not in adapted}
    state = {**state, **{k: expected[k] for k in markers if k not in state}}
    for key in adapted:
        state[key] = torch.zeros_like(expected[key])
    load_state(model, state)
    return adapted + list(markers)


def _on_cpu(obj):
    """``obj`` (nested dicts, lists and tuples of tensors) with every tensor moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {key: _on_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(value) for value in obj)
    return obj


@dataclass
class Trainer:
    """Owns the model, optimiser, schedule, logs and checkpoints of one run folder."""

    config: TrainConfig
    out_dir: Path
    model: SelectiveStereo = field(init=False)
    step: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        from ..device import keep_freed_memory, resolve_device

        cfg = self.config
        if cfg.preset not in PRESETS:
            raise ValueError(f"unknown preset {cfg.preset!r}; choose from {', '.join(PRESETS)}")
        if cfg.crop[0] % 32 or cfg.crop[1] % 32:
            raise ValueError(f"crop {cfg.crop} must be multiples of 32")
        self.device = resolve_device(cfg.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # about a tenth of a CPU step was page faults (device.keep_freed_memory)
        torch.manual_seed(cfg.seed)
        self.model = build_model(PRESETS[cfg.preset])
        missing = [d for d in cfg.photo_dirs if not Path(d).is_dir()]
        if missing:
            raise ValueError(f"photo folder {missing[0]} does not exist (Debian: apt-get install mate-backgrounds)")
        if cfg.train_iters_max and cfg.train_iters_max < cfg.train_iters:
            raise ValueError(f"train_iters_max ({cfg.train_iters_max}) must be 0 or >= train_iters "
                             f"({cfg.train_iters})")
        if not cfg.val_multiples or 1 not in cfg.val_multiples or min(cfg.val_multiples) < 1:
            raise ValueError(f"val_multiples must be positive and include 1, got {cfg.val_multiples}")
        if cfg.first_sample < 0:
            raise ValueError(f"first_sample must be >= 0, got {cfg.first_sample}")
        if not (0 <= cfg.warm_start <= 1 and 0 <= cfg.sgbm_prior <= 1 and cfg.warm_start + cfg.sgbm_prior <= 1):
            raise ValueError(f"warm_start ({cfg.warm_start}) and sgbm_prior ({cfg.sgbm_prior}) must be fractions "
                             "with a sum of at most 1")
        self.model.to(self.device)
        if cfg.edge_weight < 1:
            raise ValueError(f"edge_weight must be >= 1, got {cfg.edge_weight}")
        if cfg.cuda_graphs and cfg.train_iters_max:
            raise ValueError("cuda_graphs replays a fixed iteration count; train_iters_max draws it per step")
        graphs = cfg.cuda_graphs and self.device.type == "cuda"
        if cfg.cuda_graphs and not graphs:
            raise ValueError(f"cuda_graphs needs a CUDA device, not {self.device}")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # the scenes keep one size: autotune each convolution once
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay, graphs)
        self.train_step = TrainStep(self.model, self.optimizer, cfg.max_disp, cfg.edge_weight, graphs)
        # One-cycle as released: 1% warm-up, linear decay, 100 steps of slack. Only the learning rate may
        # change during a run: a step captured as a CUDA graph holds AdamW's betas as constants.
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
        self.val_priors = [sgbm_batch_prior(left, right, self.model.downsample_factor, cfg.data_max_disparity)
                           for left, right, _ in self.val_batches] if cfg.sgbm_prior else None
        self.elapsed = 0.0
        self.best: dict[str, float] = {}
        self.tb = None  # TensorBoard's writer while run() runs, when installed

    def initialise(self) -> dict[str, float]:
        """Load ``config.init`` into the fresh model (a new run; a resumed one has its state) and validate it as
        step 0: best.pth starts as the weights the run starts from, so a fine-tune never keeps worse ones.
        Returns that validation ({} without ``init``)."""
        cfg = self.config
        if not cfg.init:
            return {}
        try:
            transfer_state(self.model, read_state_dict(cfg.init))
        except CheckpointError as err:
            raise CheckpointError(f"--init {cfg.init} does not match preset {cfg.preset}: {err}") from None
        return self._validate()

    def remaining_scenes(self) -> SyntheticBatches:
        """The training scenes from the current step to the end of the run, in order:
        scene i of the stream is step * batch_size + i (a resumed run continues it)."""
        cfg = self.config
        first = cfg.first_sample + self.step * cfg.batch_size
        return SyntheticBatches(self.data, first, (cfg.steps - self.step) * cfg.batch_size)

    def resume(self) -> bool:
        """Continue the run saved in ``out_dir``; False if there is none. The recipe must
        be the same except for RUN_RESOURCES (where it runs, where it started)."""
        if not self.state_path.is_file():
            return False
        state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        saved, now = state["config"], json.loads(json.dumps(asdict(self.config)))
        # A field added after the run was saved counts as its default.
        defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
        saved = {**json.loads(json.dumps(defaults)), **saved}
        changed = [f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
                   if k not in RUN_RESOURCES and saved.get(k) != now.get(k)]
        if changed:
            raise ValueError(f"{self.state_path} was written with another configuration ({'; '.join(changed)}); "
                             "use the same options or a new --out")
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.best = state.get("best", {})
        return True

    def save(self) -> None:
        state = {"config": json.loads(json.dumps(asdict(self.config))), "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "step": self.step, "elapsed": self.elapsed, "best": self.best}
        # On the CPU, so that a piece trained on a GPU resumes on a machine without one.
        state = _on_cpu(state)
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.state_path)
        save_checkpoint(self.model, self.out_dir / "model.pth")

    def _log(self, name: str, row: dict) -> None:
        """Append ``row`` to the CSV log ``name``; a column the log does not have yet (a run resumed by a newer
        version) rewrites it with that column added, empty in the older rows."""
        path = self.out_dir / name
        header: list[str] = []
        rows: list[dict] = []
        if path.exists():
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])  # the header only: this runs every step
        rewrite = not header or bool(set(row) - set(header))
        if header and rewrite:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        with open(path, "w" if rewrite else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header + [k for k in row if k not in header])
            if rewrite:
                writer.writeheader()
                writer.writerows(rows)
            writer.writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(key, value, row["step"])

    def score(self, metrics: dict[str, float]) -> float:
        """What best.pth minimises: bad-2 at the deployed iteration count, or with
        ``best_over_multiples`` the worst bad-2 over the validated counts; with ``sgbm_prior``, plus bad-2 of
        the init-sgbm mode at ``sgbm_val_iters`` (both modes count)."""
        if self.config.best_over_multiples:
            score = worst_bad2(metrics, tuple(self.config.val_multiples))
        else:
            score = metrics["val_bad2"]
        return score + (metrics["sgbm_bad2"] if self.config.sgbm_prior else 0.0)

    def _validate(self) -> dict[str, float]:
        """Validate, log, keep the best-so-far weights (by ``score``) in best.pth,
        and save the state."""
        cfg = self.config
        metrics = validate(self.model, self.val_batches, cfg.valid_iters, cfg.max_disp, tuple(cfg.val_multiples))
        if self.val_priors is not None:
            metrics.update(validate(self.model, self.val_batches, cfg.sgbm_val_iters, cfg.max_disp, (1,),
                                    self.val_priors, prefix="sgbm"))
        self._log("val_log.csv", {"step": self.step, **{k: round(v, 4) for k, v in metrics.items()},
                                  "elapsed_s": round(self.elapsed, 1)})
        if not self.best or self.score(metrics) < self.score(self.best):
            self.best = {"step": self.step, **metrics}
            save_checkpoint(self.model, self.out_dir / "best.pth")
        self.save()
        return metrics

    def run(self, progress: bool = True, time_budget: float | None = None) -> dict[str, float]:
        """Train until ``config.steps`` or until ``time_budget`` seconds of this call
        would be exceeded by one more step and a final validation (then it stops
        cleanly, with the state saved, to be resumed). Returns the last validation."""
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
        loader = DataLoader(self.remaining_scenes(), batch_size=cfg.batch_size, num_workers=cfg.workers,
                            persistent_workers=False, pin_memory=self.device.type == "cuda")
        metrics: dict[str, float] = {}
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True)
        losses: list[float] = []
        call_start = time.perf_counter()
        start = call_start - self.elapsed
        step_s = val_s = 0.0
        self.stopped_early = False
        factor = self.model.downsample_factor
        for batch in loader:
            used = time.perf_counter() - call_start
            if time_budget is not None and used + 1.5 * step_s + val_s > time_budget:
                self.stopped_early = True
                break
            tick = time.perf_counter()
            if not has_ground_truth(batch[2], cfg.max_disp):  # checked here: the step itself never waits for it
                raise ValueError(f"the scenes of step {self.step + 1} have no ground-truth pixel below max_disp "
                                 f"{cfg.max_disp}")
            batch = tuple(t.to(self.device, non_blocking=True) for t in batch)
            # The prior's randomness is a function of (seed, step): a resumed run draws the same.
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
            draw = torch.rand(1, generator=generator).item()
            warm = draw < cfg.warm_start
            from_sgbm = cfg.warm_start <= draw < cfg.warm_start + cfg.sgbm_prior
            disp_init = warm_start_prior(batch[2], factor, generator) if warm else (
                sgbm_batch_prior(batch[0], batch[1], factor, cfg.data_max_disparity) if from_sgbm else None)
            iters = cfg.train_iters
            if cfg.train_iters_max:
                iters = int(torch.randint(cfg.train_iters, cfg.train_iters_max + 1, (1,), generator=generator))
            loss, epe = self.train_step(batch, iters, disp_init)
            if not math.isfinite(loss):
                raise RuntimeError(f"loss became {loss} at step {self.step}; lower --lr")
            self.scheduler.step()
            self.step += 1
            self.elapsed = time.perf_counter() - start
            took = time.perf_counter() - tick
            step_s = 0.9 * step_s + 0.1 * took if step_s else took  # smoothed, for the time budget
            losses.append(loss)
            self._log("train_log.csv", {"step": self.step, "loss": round(loss, 4), "epe": round(epe, 4),
                                        "warm_start": int(warm), **({"sgbm_prior": int(from_sgbm)} if cfg.sgbm_prior
                                                                    else {}),
                                        **({"iters": iters} if cfg.train_iters_max else {}),
                                        "lr": float(self.scheduler.get_last_lr()[0]),  # a tensor with graphs
                                        "elapsed_s": round(self.elapsed, 1)})
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", epe=f"{epe:.2f}")
            bar.update(1)
            if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                tick = time.perf_counter()
                metrics = self._validate()
                val_s = time.perf_counter() - tick
                more = ", ".join(f"x{m} iterations: {metrics['val_bad2' + multiple_suffix(m)]:.2f}%"
                                 for m in sorted(cfg.val_multiples) if m > 1)
                sgbm = (f", from SGBM at {cfg.sgbm_val_iters} iterations {metrics['sgbm_bad2']:.2f}%"
                        if cfg.sgbm_prior else "")
                bar.write(f"step {self.step}: val EPE {metrics['val_epe']:.3f} px, bad-2 {metrics['val_bad2']:.2f}%"
                          f"{f' ({more})' if more else ''}{sgbm}, best {self.score(self.best):.2f} at "
                          f"step {self.best['step']} ({self.elapsed / 60:.1f} min)")
        bar.close()
        if self.stopped_early and self.step % cfg.val_every:
            metrics = self._validate()
        else:
            self.save()
        if self.tb is not None:
            self.tb.close()
        return metrics
