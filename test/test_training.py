"""Training: the loss, and a short run that lowers the loss on a fixed batch."""

from __future__ import annotations

import torch

from sgru_ros.model import RaftConfig, SelectiveRAFT
from sgru_ros.training.synthetic import SceneConfig, SyntheticStereo
from sgru_ros.training.train import SyntheticBatches, sequence_loss, train_step


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


def test_short_training_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = SelectiveRAFT(RaftConfig(hidden_dim=32, encoder_dims=(16, 24, 32), feature_dim=32,
                                     n_downsample=3, n_gru_layers=2))
    data = SyntheticBatches(SyntheticStereo(SceneConfig(height=64, width=128, max_disparity=24), seed=5), 0, 2)
    batch = tuple(torch.stack(t) for t in zip(*(data[i] for i in range(2))))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = [train_step(model, optimizer, batch, iters=4, max_disp=192)[0] for _ in range(25)]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
