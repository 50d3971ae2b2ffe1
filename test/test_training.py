"""Training: the loss, the optimisation step (eager here; as CUDA graphs where a GPU is), runs that stop,
resume and validate."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sgru_ros.model import CheckpointError, RaftConfig, SelectiveRAFT
from sgru_ros.training.synthetic import SceneConfig, SyntheticStereo
from sgru_ros.training.step import TrainStep, edge_band, make_optimizer, sequence_loss
from sgru_ros.training.train import SyntheticBatches


SMALL = dict(hidden_dim=32, encoder_dims=(16, 24, 32), feature_dim=32, n_gru_layers=2)


def test_sequence_loss_weights_later_iterations_more():
    target = torch.zeros(1, 1, 4, 4)
    early_bad = [torch.ones_like(target), torch.zeros_like(target)]
    late_bad = [torch.zeros_like(target), torch.ones_like(target)]
    assert sequence_loss(late_bad, target, 192) > sequence_loss(early_bad, target, 192)
    # Unknown (NaN) and too-large ground truth are ignored.
    target[0, 0, 0, 0] = float("nan")
    target[0, 0, 0, 1] = 500
    pred = [torch.zeros_like(target)]
    pred[0][0, 0, 0, :2] = 1000
    assert sequence_loss(pred, target, 192).item() == 0


def test_the_loss_is_a_mean_over_the_valid_pixels_and_weighs_edges():
    """The loss never picks pixels out (a CUDA graph cannot hold a data-dependent shape): its weighted
    mean must equal the mean over the valid pixels, and edge_weight w counts edge pixels w times."""
    torch.manual_seed(0)
    target = torch.rand(2, 1, 16, 24) * 40
    target[0, 0, :3] = float("nan")
    target[1, 0, :, :2] = 300  # beyond max_disp
    predictions = [target + torch.randn_like(target) for _ in range(3)]
    init = target + torch.randn_like(target)
    valid = torch.isfinite(target) & (target < 192)
    gamma = 0.9 ** (15 / 2)
    expected = sum(gamma ** (2 - i) * (p - target).abs()[valid].mean() for i, p in enumerate(predictions))
    expected += torch.nn.functional.smooth_l1_loss(init[valid], target[valid])
    assert sequence_loss(predictions, target, 192, init).item() == pytest.approx(expected.item(), rel=1e-5)

    # A step from 10 to 30 px between columns 11 and 12: both are at the edge, and 3 px either side of them.
    step = torch.full((1, 1, 16, 24), 10.0)
    step[..., 12:] = 30.0
    band = edge_band(step)
    assert band[0, 0, 0].tolist() == [False] * 8 + [True] * 8 + [False] * 8
    on_edges, off_edges = step + 4 * band, step + 4 * ~band  # a 4 px error on 8 / on 16 of 24 columns
    for weight in (1.0, 3.0):
        ratio = (sequence_loss([on_edges], step, 192, edge_weight=weight)
                 / sequence_loss([off_edges], step, 192, edge_weight=weight)).item()
        assert ratio == pytest.approx(weight * 8 / 16, rel=1e-5)


def test_edge_band_is_the_evaluations_edge_region():
    from sgru_ros.evaluation import region_masks

    scene = SyntheticStereo(SceneConfig(height=64, width=128, max_disparity=24), seed=7)[0]
    edges = region_masks(scene.disparity, scene.left)["edges"]
    assert 0 < edges.sum() < edges.size
    assert torch.equal(edge_band(torch.from_numpy(scene.disparity)[None, None])[0, 0], torch.from_numpy(edges))


def test_cuda_graph_steps_are_refused_without_cuda_and_with_drawn_iteration_counts(tmp_path):
    """Also: an edge weight below 1 is refused."""
    from sgru_ros.training.train import TrainConfig, Trainer

    model = SelectiveRAFT(RaftConfig(**SMALL, n_downsample=3))
    with pytest.raises(ValueError, match="CUDA graphs need the model on a CUDA device"):
        TrainStep(model, make_optimizer(model, 1e-3, 0.0), max_disp=192, graphs=True)
    with pytest.raises(ValueError, match="warmup must be at least 1"):
        TrainStep(model, make_optimizer(model, 1e-3, 0.0), max_disp=192, warmup=0)
    config = TrainConfig(preset="raft-compact8", steps=2, batch_size=1, crop=(64, 128), val_samples=1, workers=0,
                         device="cpu", photo_dirs=(), cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs needs a CUDA device, not cpu"):
        Trainer(config, tmp_path)
    with pytest.raises(ValueError, match="train_iters_max draws it per step"):
        Trainer(TrainConfig(**{**config.__dict__, "train_iters": 2, "train_iters_max": 4}), tmp_path)
    with pytest.raises(ValueError, match="edge_weight must be >= 1"):
        Trainer(TrainConfig(**{**config.__dict__, "cuda_graphs": False, "edge_weight": 0.5}), tmp_path)


def test_an_optimizer_state_resumes_with_and_without_cuda_graphs():
    """A state saved by a graphed run (tensor learning rate, capturable) resumes in an eager one and back:
    the resumed optimiser keeps its own way of running and the saved learning rate and moments."""
    from sgru_ros.training.step import load_optimizer_state

    model = torch.nn.Linear(3, 2)
    saved = torch.optim.AdamW(model.parameters(), lr=torch.tensor(2e-4), weight_decay=1e-5)
    model(torch.ones(1, 3)).sum().backward()
    saved.step()
    state = saved.state_dict()
    state["param_groups"][0].update(capturable=True, foreach=True)  # as a graphed run saves it (CUDA only)
    eager = make_optimizer(model, 4e-4, 1e-5)
    load_optimizer_state(eager, state)
    group = eager.param_groups[0]
    assert group["lr"] == pytest.approx(2e-4) and not isinstance(group["lr"], torch.Tensor)
    assert not group["capturable"] and group["foreach"] is None  # make_optimizer's own choice
    assert torch.equal(eager.state[model.weight]["exp_avg"], saved.state[model.weight]["exp_avg"])
    eager.step()  # runs as an eager optimiser
    tensor_lr = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3))
    load_optimizer_state(tensor_lr, eager.state_dict())
    assert isinstance(tensor_lr.param_groups[0]["lr"], torch.Tensor)
    assert tensor_lr.param_groups[0]["lr"].item() == pytest.approx(2e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU (scripts/gpu_train_check.py)")
def test_graphed_training_steps_match_eager_ones():
    """12 steps, every third from a prior: both kinds of step are warmed up, captured and replayed while the
    one-cycle schedule changes the learning rate; losses, errors and final weights match the eager steps."""
    from sgru_ros.training.train import warm_start_prior

    data = SyntheticBatches(SyntheticStereo(SceneConfig(height=64, width=128, max_disparity=24), seed=5), 0, 8)
    batches = [tuple(torch.stack(t).cuda() for t in zip(*(data[2 * i + j] for j in range(2)))) for i in range(4)]
    priors = [warm_start_prior(b[2], 4, torch.Generator().manual_seed(i)) for i, b in enumerate(batches)]
    results, weights = [], []
    for graphs in (False, True):
        torch.manual_seed(1)
        model = SelectiveRAFT(RaftConfig(**SMALL, n_downsample=2, early_downsample=True)).cuda()
        step = TrainStep(model, make_optimizer(model, 1e-3, 1e-5, graphs), max_disp=192, graphs=graphs, warmup=2)
        schedule = torch.optim.lr_scheduler.OneCycleLR(step.optimizer, 1e-3, 13, pct_start=0.3, cycle_momentum=False)
        run = []
        for k in range(12):
            run.append(step(batches[k % 4], 3, priors[k % 4] if k % 3 == 2 else None))
            schedule.step()
        results.append(run)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        assert len(step.captured) == 2 * int(graphs)
    for (loss, epe), (graphed_loss, graphed_epe) in zip(*results):
        assert graphed_loss == pytest.approx(loss, rel=1e-3) and graphed_epe == pytest.approx(epe, rel=1e-3)
    assert ((weights[0] - weights[1]).norm() / weights[0].norm()).item() < 1e-4


def test_short_training_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = SelectiveRAFT(RaftConfig(hidden_dim=32, encoder_dims=(16, 24, 32), feature_dim=32,
                                     n_downsample=3, n_gru_layers=2))
    data = SyntheticBatches(SyntheticStereo(SceneConfig(height=64, width=128, max_disparity=24), seed=5), 0, 2)
    batch = tuple(torch.stack(t) for t in zip(*(data[i] for i in range(2))))
    step = TrainStep(model, torch.optim.AdamW(model.parameters(), lr=1e-3), max_disp=192)
    losses = [step(batch, iters=4)[0] for _ in range(25)]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_a_1_8_model_starts_a_1_4_model():
    from sgru_ros.model import build_model
    from sgru_ros.training.train import transfer_state

    torch.manual_seed(0)
    coarse = build_model(RaftConfig(**SMALL, n_downsample=3))
    fine = build_model(RaftConfig(**SMALL, n_downsample=2, early_downsample=True))
    fresh = transfer_state(fine, coarse.state_dict())
    assert set(fresh) == {"update_block.mask.2.weight", "update_block.mask.2.bias",
                          "fnet.stage_strides", "cnet.stage_strides"}
    assert torch.equal(fine.fnet.conv1.weight, coarse.fnet.conv1.weight)
    assert fine.update_block.mask[2].weight.abs().sum() == 0  # uniform convex upsampling to start
    # Zeroed mask logits: every fine pixel is the mean of its 3x3 coarse neighbours, so a
    # constant disparity upsamples to the same constant (times the factor).
    images = torch.rand(2, 1, 3, 64, 128) * 255
    with torch.no_grad():
        assert torch.isfinite(fine.eval()(*images, iters=2).final).all()
    # Anything but the mask head must fit.
    other = build_model(RaftConfig(**{**SMALL, "feature_dim": 48}, n_downsample=3))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        transfer_state(fine, other.state_dict())


def test_the_network_of_a_model_with_an_edge_refinement_starts_a_run():
    """``--init`` with the bundled weights: the network is taken, the refinement (trained for it as it was) left out."""
    from sgru_ros.model import build_model
    from sgru_ros.training.train import transfer_state

    torch.manual_seed(0)
    refined = build_model(RaftConfig(**SMALL, edge_width=4, edge_window=3))
    plain = build_model(RaftConfig(**SMALL))
    assert transfer_state(plain, refined.state_dict()) == []
    assert torch.equal(plain.fnet.conv1.weight, refined.fnet.conv1.weight)
    both = build_model(RaftConfig(**SMALL, edge_width=4, edge_window=3))
    transfer_state(both, refined.state_dict())  # a model with one takes it
    assert torch.equal(both.edge_refine.head.bias, refined.edge_refine.head.bias)
    with pytest.raises(CheckpointError, match=r"missing keys 12 \(edge_refine\."):
        transfer_state(both, plain.state_dict())


def test_warm_start_prior_is_a_noisy_holed_estimate_at_working_resolution():
    from sgru_ros.training.train import warm_start_prior

    target = torch.full((2, 1, 64, 128), 40.0)
    target[0, 0, :8] = float("nan")
    prior = warm_start_prior(target, 4, torch.Generator().manual_seed(3))
    assert prior.shape == (2, 1, 16, 32) and torch.isfinite(prior).all()
    # In working-resolution pixels (input / 4), close to the truth where not a hole.
    assert abs(prior[prior > 0].median().item() - 10.0) < 1.0
    again = warm_start_prior(target, 4, torch.Generator().manual_seed(3))
    assert torch.equal(prior, again)  # reproducible from the generator: resumed runs draw the same


def test_time_budget_stops_cleanly_and_resume_continues_the_same_schedule(tmp_path):
    from sgru_ros.training.train import TrainConfig, Trainer

    config = TrainConfig(preset="raft-compact8", steps=8, batch_size=1, crop=(64, 128), train_iters=2,
                         valid_iters=1, val_every=4, val_samples=1, data_max_disparity=24, workers=0,
                         device="cpu", photo_dirs=())
    first = Trainer(config, tmp_path)
    first.run(progress=False, time_budget=0.5)
    assert first.stopped_early and 0 < first.step < config.steps
    assert (tmp_path / "best.pth").is_file() and (tmp_path / "train_state.pt").is_file()
    lr_at_stop = first.scheduler.get_last_lr()[0]

    # Where it runs and where it started may differ in a resumed piece (a GPU with more workers).
    second = Trainer(TrainConfig(**{**config.__dict__, "workers": 2, "device": "auto", "init": "gone.pth"}),
                     tmp_path)
    assert second.resume() and second.step == first.step and second.best == first.best
    assert second.scheduler.get_last_lr()[0] == lr_at_stop  # no new warm-up
    second.run(progress=False)
    assert second.step == config.steps and not second.stopped_early
    steps = [int(line.split(",")[0]) for line in (tmp_path / "train_log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, config.steps + 1))  # every step once, none repeated
    # A resumed run must have the same recipe.
    with pytest.raises(ValueError, match=r"another configuration \(lr 0.0004 -> 0.001\)"):
        Trainer(TrainConfig(**{**config.__dict__, "lr": 1e-3}), tmp_path).resume()
    # The scene stream continues where the stopped piece left off.
    assert second.remaining_scenes().start == config.steps * config.batch_size


def test_a_later_stage_starts_past_the_scenes_an_earlier_one_saw(tmp_path):
    from sgru_ros.training.train import TrainConfig, Trainer

    config = TrainConfig(preset="raft-compact8", steps=3, batch_size=2, crop=(64, 128), val_samples=1,
                         workers=0, device="cpu", photo_dirs=())
    earlier = Trainer(config, tmp_path / "stage1")
    later = Trainer(TrainConfig(**{**config.__dict__, "first_sample": config.steps * config.batch_size}),
                    tmp_path / "stage2")
    seen = earlier.remaining_scenes()
    fresh = later.remaining_scenes()
    assert (seen.start, len(seen)) == (0, 6) and (fresh.start, len(fresh)) == (6, 6)
    left_seen, _, _ = seen[len(seen) - 1]
    left_fresh, _, _ = fresh[0]
    assert not torch.equal(left_seen, left_fresh)
    assert torch.equal(left_fresh, SyntheticBatches(earlier.data, 6, 1)[0][0])  # same generator, scene 6
    with pytest.raises(ValueError, match="first_sample must be >= 0"):
        Trainer(TrainConfig(**{**config.__dict__, "first_sample": -1}), tmp_path / "bad")


def test_random_iteration_counts_and_validation_at_several_multiples(tmp_path):
    from sgru_ros.training.train import TrainConfig, Trainer

    config = TrainConfig(preset="raft-compact8", steps=4, batch_size=1, crop=(64, 128), train_iters=1,
                         train_iters_max=3, valid_iters=1, val_multiples=(1, 2, 4), best_over_multiples=True,
                         val_every=2, val_samples=1, data_max_disparity=24, workers=0, device="cpu", photo_dirs=())
    trainer = Trainer(config, tmp_path)
    trainer.run(progress=False)
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    column = log[0].split(",").index("iters")
    assert {int(row.split(",")[column]) for row in log[1:]} <= {1, 2, 3}
    rows = (tmp_path / "val_log.csv").read_text().splitlines()
    assert rows[0].split(",") == ["step", "val_epe", "val_bad2", "val_epe_x2", "val_bad2_x2", "val_epe_x4",
                                  "val_bad2_x4", "val_bad2_edges", "elapsed_s"] and len(rows) == 3
    # best.pth is chosen by the worst of the three counts.
    worst = max(trainer.best[k] for k in ("val_bad2", "val_bad2_x2", "val_bad2_x4"))
    assert trainer.score(trainer.best) == worst
    for bad in ({"train_iters": 3, "train_iters_max": 2}, {"val_multiples": (2, 4)}):
        with pytest.raises(ValueError):
            Trainer(TrainConfig(**{**config.__dict__, **bad}), tmp_path / "bad")


def test_sgbm_prior_in_training_and_validation(tmp_path):
    """With sgbm_prior, batches start from SGBM's map of their own scene (close to the ground truth at the
    working resolution), and validation also scores the init-sgbm mode, which counts in best.pth's choice."""
    from sgru_ros.training.synthetic import SceneConfig, SyntheticStereo
    from sgru_ros.training.train import SyntheticBatches, TrainConfig, Trainer, sgbm_batch_prior

    data = SyntheticBatches(SyntheticStereo(SceneConfig(height=64, width=128, max_disparity=24), seed=3), 0, 2)
    left, right, target = (torch.stack(t) for t in zip(data[0], data[1]))
    prior = sgbm_batch_prior(left, right, factor=4, max_disparity=24)
    assert prior.shape == (2, 1, 16, 32)
    truth = torch.nn.functional.interpolate(torch.nan_to_num(target), size=(16, 32), mode="area") / 4
    assert (prior - truth).abs().median() < 0.5 < truth.median()  # median within 2 px at full resolution
    config = TrainConfig(preset="raft-compact8", steps=4, batch_size=1, crop=(64, 128), train_iters=1, valid_iters=1,
                         sgbm_prior=0.5, warm_start=0.25, sgbm_val_iters=2, val_every=2, val_samples=1,
                         data_max_disparity=24, workers=0, device="cpu", photo_dirs=())
    trainer = Trainer(config, tmp_path)
    trainer.run(progress=False)
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert "sgbm_prior" in log[0].split(",")
    rows = (tmp_path / "val_log.csv").read_text().splitlines()
    assert rows[0].split(",") == ["step", "val_epe", "val_bad2", "val_epe_x2", "val_bad2_x2", "val_bad2_edges",
                                  "sgbm_epe", "sgbm_bad2", "sgbm_bad2_edges", "elapsed_s"]
    assert trainer.score(trainer.best) == pytest.approx(trainer.best["val_bad2"] + trainer.best["sgbm_bad2"])
    with pytest.raises(ValueError, match="sum of at most 1"):
        Trainer(TrainConfig(**{**config.__dict__, "sgbm_prior": 0.9}), tmp_path / "bad")


def test_a_run_from_init_weights_validates_them_as_step_0(tmp_path):
    """best.pth starts as the weights a fine-tune starts from: a run that never beats them keeps them."""
    from sgru_ros.model import save_checkpoint
    from sgru_ros.training.train import TrainConfig, Trainer, build_model, PRESETS

    torch.manual_seed(1)
    save_checkpoint(build_model(PRESETS["raft-compact8"]), tmp_path / "start.pth")
    config = TrainConfig(preset="raft-compact8", steps=2, batch_size=1, crop=(64, 128), train_iters=1, valid_iters=1,
                         val_multiples=(1,), val_every=2, val_samples=1, data_max_disparity=24, workers=0,
                         device="cpu", photo_dirs=(), init=str(tmp_path / "start.pth"))
    trainer = Trainer(config, tmp_path / "run")
    start = trainer.initialise()
    assert set(start) == {"val_epe", "val_bad2", "val_bad2_edges"} and trainer.best["step"] == 0
    assert (tmp_path / "run" / "best.pth").is_file()
    assert (tmp_path / "run" / "val_log.csv").read_text().splitlines()[1].startswith("0,")


def test_a_log_gains_a_column_when_a_newer_version_resumes_the_run(tmp_path):
    from sgru_ros.training.train import TrainConfig, Trainer

    config = TrainConfig(preset="raft-compact8", steps=2, batch_size=1, crop=(64, 128), val_samples=1, workers=0,
                         device="cpu", photo_dirs=())
    trainer = Trainer(config, tmp_path)
    (tmp_path / "val_log.csv").write_text("step,val_bad2,elapsed_s\n75,40.0,10.0\n")
    trainer._log("val_log.csv", {"step": 150, "val_bad2": 30.0, "val_bad2_edges": 55.0, "elapsed_s": 20.0})
    trainer._log("val_log.csv", {"step": 225, "val_bad2": 29.0, "val_bad2_edges": 54.0, "elapsed_s": 30.0})
    assert (tmp_path / "val_log.csv").read_text().splitlines() == [
        "step,val_bad2,elapsed_s,val_bad2_edges", "75,40.0,10.0,", "150,30.0,20.0,55.0", "225,29.0,30.0,54.0"]


def test_the_edge_stage_trains_a_refinement_on_a_frozen_network(tmp_path):
    from sgru_ros.model import build_model, load_model, save_checkpoint
    from sgru_ros.training.edges import EdgeStageConfig, run

    torch.manual_seed(0)
    backbone = build_model(RaftConfig(hidden_dim=32, encoder_dims=(16, 16, 32), feature_dim=32, n_gru_layers=1))
    save_checkpoint(backbone, tmp_path / "backbone.pth")
    lines: list[str] = []
    config = EdgeStageConfig(backbone=str(tmp_path / "backbone.pth"), width=4, window=3, scenes=8, steps=4,
                             batch_size=4, crop_height=32, val_every=2, val_samples=4)
    best = run(config, tmp_path / "run", log=lines.append)
    model = load_model(tmp_path / "run/best.pth")
    assert (model.config.edge_width, model.config.edge_window) == (4, 3)
    # The network's own weights are unchanged; only the refinement was trained.
    frozen = backbone.state_dict()
    assert all(torch.equal(v, frozen[k]) for k, v in model.state_dict().items() if not k.startswith("edge_refine."))
    log = (tmp_path / "run/val_log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and [row.split(",")[0] for row in log[1:]] == ["0", "2", "4"]
    assert best["step"] in (0, 2, 4) and "through the network" in lines[-1]
    # Scored on the cached outputs and through the whole network: the same figures.
    through = dict(item.split(" ") for item in lines[-1].split("through the network: ")[1].split(", "))
    for key in ("val_bad2", "val_bad2_x2", "val_bad2_x4", "val_bad2_edges"):
        assert abs(float(through[key]) - best[key]) <= 0.011, key
    assert lines[0].startswith("network outputs on 8 scenes made")
    # The outputs are cached in the run folder for the same network and scenes only.
    same: list[str] = []
    assert run(config, tmp_path / "run", log=same.append) == best  # seeded: the same run again
    assert same[0].startswith("network outputs on 8 scenes reused")
    torch.manual_seed(1)
    save_checkpoint(build_model(backbone.config), tmp_path / "other.pth")
    again: list[str] = []
    run(dataclasses.replace(config, steps=1, val_every=1, backbone=str(tmp_path / "other.pth")), tmp_path / "run",
        log=again.append)
    assert again[0].startswith("network outputs on 8 scenes remade (another network")
    with pytest.raises(ValueError, match="without an edge refinement"):
        run(EdgeStageConfig(backbone=str(tmp_path / "run/best.pth"), scenes=8, val_samples=4), tmp_path / "again")


def test_a_student_takes_the_teachers_weights_with_its_encoders_cut():
    from sgru_ros.model import IGEVConfig, build_model
    from sgru_ros.training.distill import ENCODERS, make_student

    torch.manual_seed(0)
    teacher = build_model(RaftConfig(**SMALL, early_downsample=True, edge_width=4))
    student = make_student(teacher, (8, 16, 24))
    assert student.config == dataclasses.replace(teacher.config, encoder_dims=(8, 16, 24))
    source = teacher.state_dict()
    for key, value in student.state_dict().items():
        if key.startswith(ENCODERS):
            assert torch.equal(value, source[key][tuple(slice(0, n) for n in value.shape)]), key
        else:
            assert torch.equal(value, source[key]), key
    assert student.fnet.conv1.weight.shape == (8, 3, 7, 7) and student.cnet.layer3[1].conv2.weight.shape[0] == 24
    # Cut to its own widths, the teacher is itself: the cut keeps every channel where it was.
    from sgru_ros.training.distill import encoder_outputs
    images = torch.rand(2, 3, 64, 96) * 255
    same = make_student(teacher, teacher.config.encoder_dims)
    with torch.no_grad():
        for a, b in zip(encoder_outputs(teacher.eval(), images[:1], images[1:]),
                        encoder_outputs(same.eval(), images[:1], images[1:])):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="layout"):
        make_student(teacher, (8, 16, 16))  # no shortcut projection in stage 3, where the teacher has one
    with pytest.raises(ValueError, match="must not exceed"):
        make_student(teacher, (8, 16, 48))
    with pytest.raises(ValueError, match="Selective-RAFT"):
        make_student(build_model(IGEVConfig(hidden_dim=32, n_gru_layers=1)), (8, 8, 8))


def test_distillation_trains_only_the_encoders_toward_the_teachers_outputs_and_resumes(tmp_path):
    from sgru_ros.model import build_model, load_model, save_checkpoint
    from sgru_ros.training.distill import (ENCODERS, DistillConfig, distillation_loss, encoder_outputs,
                                           make_student, run)
    from sgru_ros.training.train import TrainConfig

    torch.manual_seed(0)
    teacher = build_model(RaftConfig(hidden_dim=32, encoder_dims=(16, 16, 32), feature_dim=32, n_gru_layers=1))
    save_checkpoint(teacher, tmp_path / "teacher.pth")
    config = DistillConfig(teacher=str(tmp_path / "teacher.pth"), encoder_dims=(8, 8, 16), steps=6, batch_size=2,
                           lr=2e-3, val_every=3, val_samples=2, photo_dir="")
    whole = run(config, tmp_path / "whole", log=lambda line: None)
    lines: list[str] = []
    run(config, tmp_path / "pieces", log=lines.append, time_budget_s=0)
    assert lines[-2].startswith("time budget spent at step 3")
    resumed: list[str] = []
    assert run(config, tmp_path / "pieces", log=resumed.append) == whole  # the same run in two pieces
    assert resumed[0] == "resumed at step 3"
    assert (tmp_path / "whole/val_log.csv").read_text() == (tmp_path / "pieces/val_log.csv").read_text()
    rows = (tmp_path / "whole/val_log.csv").read_text().splitlines()
    assert rows[0].split(",")[:2] == ["step", "val_epe"] and "sgbm_bad2_x2" in rows[0] and "loss" in rows[0]
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "3", "6"]
    # Only the encoders learned, toward the teacher's outputs (on the first training scenes).
    assert load_model(tmp_path / "whole/best.pth").config.encoder_dims == (8, 8, 16)
    state = torch.load(tmp_path / "whole/state.pt", weights_only=True)["student"]
    frozen = teacher.state_dict()
    assert all(torch.equal(v, frozen[k]) for k, v in state.items() if not k.startswith(ENCODERS))
    # Batch norm stayed frozen: the encoders' running statistics are the teacher's, cut.
    statistics = [k for k in state if k.startswith("cnet.") and k.endswith(("running_mean", "running_var"))]
    assert statistics and all(torch.equal(state[k], frozen[k][:len(state[k])]) for k in statistics)
    student = make_student(teacher, (8, 8, 16))
    scene = TrainConfig(seed=config.seed, photo_dirs=()).scene()
    left, right, _ = next(iter(torch.utils.data.DataLoader(
        SyntheticBatches(SyntheticStereo(scene, seed=config.seed), config.first_sample, 2), batch_size=2)))
    with torch.no_grad():
        target = encoder_outputs(teacher, left, right)
        before = distillation_loss(encoder_outputs(student, left, right), target)
        student.load_state_dict(state)
        after = distillation_loss(encoder_outputs(student, left, right), target)
    assert after < 0.9 * before  # seeded: 0.89 -> 0.73
    with pytest.raises(ValueError, match="another recipe"):
        run(dataclasses.replace(config, lr=1e-3), tmp_path / "whole")
    with pytest.raises(ValueError, match="photo folder"):
        run(dataclasses.replace(config, photo_dir=str(tmp_path / "none")), tmp_path / "other")


def test_a_stage_configs_fields_are_its_command_line_options():
    import argparse

    from sgru_ros.training.distill import DistillConfig
    from sgru_ros.training.train import add_config_options, config_from_options

    parser = argparse.ArgumentParser()
    add_config_options(parser, DistillConfig, required=("teacher",))
    args = parser.parse_args(["--teacher", "t.pth", "--encoder-dims", "8", "8", "16", "--lr", "1e-3"])
    assert config_from_options(args, DistillConfig) == DistillConfig(teacher="t.pth", encoder_dims=(8, 8, 16), lr=1e-3)
    assert parser.parse_args(["--teacher", "t", "--photo-dir", ""]).photo_dir == ""
    with pytest.raises(SystemExit):
        parser.parse_args(["--encoder-dims", "8", "8", "16"])  # --teacher is required
