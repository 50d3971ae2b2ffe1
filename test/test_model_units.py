"""The GRU arithmetic and the shape checks of the model modules."""

from __future__ import annotations

import pytest
import torch

from sgru_ros.model import ConvGRU, RaftConfig, SelectiveConvGRU, SelectiveRAFT
from sgru_ros.model.base import output_schedule


def test_conv_gru_follows_the_equations():
    torch.manual_seed(0)
    gru = ConvGRU(hidden_dim=4, input_dim=3, kernel_size=1)
    h, x = torch.randn(2, 4, 5, 6), torch.randn(2, 3, 5, 6)

    def conv1x1(conv, inp):  # the 1x1 convolution written as a matrix product per pixel
        return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], inp) + conv.bias.view(1, -1, 1, 1)

    hx = torch.cat([h, x], 1)
    z = torch.sigmoid(conv1x1(gru.convz, hx))
    r = torch.sigmoid(conv1x1(gru.convr, hx))
    q = torch.tanh(conv1x1(gru.convq, torch.cat([r * h, x], 1)))
    assert torch.allclose(gru(h, x), (1 - z) * h + z * q, atol=1e-6)


def test_selective_gru_blends_by_attention():
    torch.manual_seed(0)
    gru = SelectiveConvGRU(hidden_dim=4, input_dim=5)
    h, a, b = torch.randn(1, 4, 6, 7), torch.randn(1, 2, 6, 7), torch.randn(1, 3, 6, 7)
    x = torch.cat([a, b], 1)
    ones, zeros = torch.ones(1, 1, 6, 7), torch.zeros(1, 1, 6, 7)
    assert torch.allclose(gru(ones, h, a, b), gru.small_gru(h, x))
    assert torch.allclose(gru(zeros, h, a, b), gru.large_gru(h, x))
    half = gru(0.5 * ones, h, a, b)
    assert torch.allclose(half, 0.5 * (gru.small_gru(h, x) + gru.large_gru(h, x)), atol=1e-6)


def test_selective_gru_rejects_wrong_shapes():
    gru = SelectiveConvGRU(hidden_dim=4, input_dim=5)
    h = torch.zeros(1, 4, 6, 7)
    with pytest.raises(ValueError, match="expects 5 input channels, got 4"):
        gru(torch.zeros(1, 1, 6, 7), h, torch.zeros(1, 4, 6, 7))
    with pytest.raises(ValueError, match="attention must be B x 1"):
        gru(torch.zeros(1, 1, 3, 7), h, torch.zeros(1, 5, 6, 7))


def test_model_input_checks():
    model = SelectiveRAFT(RaftConfig(hidden_dim=32, encoder_dims=(16, 24, 32), feature_dim=32)).eval()
    with pytest.raises(ValueError, match="not a multiple of 32"):
        model(torch.zeros(1, 3, 64, 70), torch.zeros(1, 3, 64, 70), iters=1)
    with pytest.raises(ValueError, match="differ in shape"):
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 96), iters=1)
    with pytest.raises(ValueError, match="must be B x 3 x H x W"):
        model(torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64), iters=1)
    with pytest.raises(ValueError, match="disp_init must be"):
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64), iters=1, disp_init=torch.zeros(1, 1, 8, 8))


def test_output_schedule():
    assert output_schedule(8, None) == [8]
    assert output_schedule(8, [8, 2, 2, 4]) == [2, 4, 8]
    with pytest.raises(ValueError):
        output_schedule(8, [9])
    with pytest.raises(ValueError):
        output_schedule(0, None)


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of 16"):
        RaftConfig(hidden_dim=40)
    with pytest.raises(ValueError, match="n_gru_layers"):
        RaftConfig(n_gru_layers=4)
