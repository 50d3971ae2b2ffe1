"""The GRU arithmetic and the shape checks of the model modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sgru_ros.model import ConvGRU, RaftConfig, SelectiveConvGRU, SelectiveRAFT
from sgru_ros.model.base import normalize_image, output_schedule
from sgru_ros.model.encoders import FeatureEncoder
from sgru_ros.model.layers import Conv2d, winograd_convolutions


def _gru_equations(gru: ConvGRU, h, x):
    """The ConvGRU as the paper writes it, one convolution per gate over all inputs."""
    def conv(c, inp):
        return F.conv2d(inp, c.weight, c.bias, padding=c.padding)
    hx = torch.cat([h, x], 1)
    z = torch.sigmoid(conv(gru.convz, hx))
    r = torch.sigmoid(conv(gru.convr, hx))
    q = torch.tanh(conv(gru.convq, torch.cat([r * h, x], 1)))
    return (1 - z) * h + z * q


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_conv_gru_with_its_context_folded_in_follows_the_equations(kernel_size):
    torch.manual_seed(0)
    gru = ConvGRU(hidden_dim=4, input_dim=5, kernel_size=kernel_size, context_dim=2)
    h, c, y = torch.randn(2, 4, 5, 6), torch.randn(2, 2, 5, 6), torch.randn(2, 3, 5, 6)
    step = gru.prepare(c)
    expected = _gru_equations(gru, h, torch.cat([c, y], 1))
    assert torch.allclose(step(h, y, torch.cat([h, y], 1)), expected, atol=1e-6)
    # the folded context is reused: a second iteration from the new state still follows the equations
    h2 = expected
    assert torch.allclose(step(h2, y, torch.cat([h2, y], 1)), _gru_equations(gru, h2, torch.cat([c, y], 1)),
                          atol=1e-6)


def test_selective_gru_blends_by_attention():
    torch.manual_seed(0)
    gru = SelectiveConvGRU(hidden_dim=4, input_dim=6, context_dim=1)
    h, c, a, b = torch.randn(1, 4, 6, 7), torch.randn(1, 1, 6, 7), torch.randn(1, 2, 6, 7), torch.randn(1, 3, 6, 7)
    x = torch.cat([c, a, b], 1)
    ones, zeros = torch.ones(1, 1, 6, 7), torch.zeros(1, 1, 6, 7)
    small, large = _gru_equations(gru.small_gru, h, x), _gru_equations(gru.large_gru, h, x)
    assert torch.allclose(gru.prepare(c, ones)(h, a, b), small, atol=1e-6)
    assert torch.allclose(gru.prepare(c, zeros)(h, a, b), large, atol=1e-6)
    assert torch.allclose(gru.prepare(c, 0.5 * ones)(h, a, b), 0.5 * (small + large), atol=1e-6)


def test_selective_gru_rejects_wrong_shapes():
    gru = SelectiveConvGRU(hidden_dim=4, input_dim=5, context_dim=1)
    h = torch.zeros(1, 4, 6, 7)
    step = gru.prepare(torch.zeros(1, 1, 6, 7), torch.zeros(1, 1, 6, 7))
    with pytest.raises(ValueError, match="expects 4 per-iteration input channels, got 3"):
        step(h, torch.zeros(1, 3, 6, 7))
    with pytest.raises(ValueError, match="expects 1 context channels, got 2"):
        gru.prepare(torch.zeros(1, 2, 6, 7), torch.zeros(1, 1, 6, 7))
    with pytest.raises(ValueError, match="attention must be B x 1"):
        gru.prepare(torch.zeros(1, 1, 6, 7), torch.zeros(1, 1, 3, 7))


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
    with pytest.raises(ValueError, match=r"output iterations must lie in 1\.\.8, got \[9\]"):
        output_schedule(8, [9])
    with pytest.raises(ValueError, match="iters must be at least 1, got 0"):
        output_schedule(0, None)


def test_both_networks_take_the_same_call_and_say_what_they_are():
    """Code outside model/ never asks which network it holds: one call, the variant and the disparity
    bound come from the network."""
    from sgru_ros.model import IGEVConfig, SelectiveIGEV

    torch.manual_seed(0)
    raft = SelectiveRAFT(RaftConfig(hidden_dim=32, encoder_dims=(16, 24, 32), feature_dim=32)).eval()
    igev = SelectiveIGEV(IGEVConfig(hidden_dim=32, n_gru_layers=2)).eval()
    left, right = torch.rand(1, 3, 64, 128) * 255, torch.rand(1, 3, 64, 128) * 255
    with torch.no_grad():
        for model in (raft, igev):
            pred = model(left, right, iters=2, output_iters=[1, 2], max_disp=64, return_init=True)
            assert pred.iterations == [1, 2] and pred.final.shape == (1, 1, 64, 128)
        assert raft(left, right, iters=1, max_disp=64, return_init=True).init_disp is None  # RAFT has no volume
        assert igev(left, right, iters=1, max_disp=64, return_init=True).init_disp.shape == (1, 1, 64, 128)
    assert (raft.variant, igev.variant) == ("raft", "igev")
    assert (raft.largest_disparity(640, 192), igev.largest_disparity(640, 192)) == (640.0, 192.0)
    raft.check_max_disp(100)  # no cost volume of fixed range: any value
    with pytest.raises(ValueError, match="max_disp must be a positive multiple of 32, got 100"):
        igev.check_max_disp(100)


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of 16"):
        RaftConfig(hidden_dim=40)
    with pytest.raises(ValueError, match="n_gru_layers"):
        RaftConfig(n_gru_layers=4)


needs_nnpack = pytest.mark.skipif(not torch._nnpack_available(), reason="this PyTorch build has no NNPACK")


@needs_nnpack
@pytest.mark.parametrize("batch", [1, 2])
def test_large_3x3_convolutions_run_as_winograd_within_rounding_of_the_direct_one(batch):
    torch.manual_seed(0)
    conv = Conv2d(64, 96, 3, padding=1)
    x = torch.randn(batch, 64, 32, 48)
    with torch.no_grad():
        out = conv(x)
        direct = F.conv2d(x, conv.weight, conv.bias, padding=1)
        # NNPACK's Winograd kernel took it, one image at a time ...
        per_image = torch.cat([torch._nnpack_spatial_convolution(image, conv.weight, conv.bias, [1, 1], [1, 1])
                               for image in x.split(1)])
        assert torch.equal(out, per_image)
        assert not torch.equal(out, direct)
        # ... within rounding of the direct convolution, which it falls back to when switched off
        assert (out - direct).abs().max() <= 1e-4 * direct.abs().max()
        with winograd_convolutions(False):
            assert torch.equal(conv(x), direct)


@needs_nnpack
@pytest.mark.parametrize("case", ["small map", "few input channels", "few output channels", "5x5 kernel", "stride 2",
                                  "padding 3", "gradients", "float64", "channels_last", "NNPACK switched off"])
def test_convolutions_that_ran_slower_as_winograd_or_need_more_stay_direct(case):
    torch.manual_seed(0)
    conv = Conv2d(32 if case == "few input channels" else 64, 32 if case == "few output channels" else 64,
                  5 if case == "5x5 kernel" else 3, stride=2 if case == "stride 2" else 1,
                  padding={"5x5 kernel": 2, "padding 3": 3}.get(case, 1))
    x = torch.randn(1, conv.in_channels, *((16, 24) if case == "small map" else (32, 48)))
    if case == "float64":
        conv, x = conv.double(), x.double()
    if case == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.set_grad_enabled(case == "gradients"), \
            torch.backends.nnpack.flags(enabled=case != "NNPACK switched off"):
        out = conv(x)
    assert torch.equal(out, F.conv2d(x, conv.weight, conv.bias, stride=conv.stride, padding=conv.padding))
    if case == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


@needs_nnpack
def test_winograd_moves_a_network_by_well_under_a_thousandth_of_a_pixel():
    torch.manual_seed(0)
    model = SelectiveRAFT(RaftConfig()).eval()
    left, right = torch.rand(2, 1, 3, 128, 192).mul(255).unbind(0)
    with torch.no_grad():
        fast = model(left, right, iters=4).disparities[-1]
        with winograd_convolutions(False):
            direct = model(left, right, iters=4).disparities[-1]
    assert not torch.equal(fast, direct)
    assert (fast - direct).abs().max() < 1e-3


def test_raft_feature_encoder_on_each_image_is_the_function_of_one_batch_also_in_training():
    """SelectiveRAFT encodes left and right apart on the CPU: exact because its norm is per image."""
    torch.manual_seed(0)
    encoder = FeatureEncoder((16, 24, 32), out_dim=40, downsample=2).train()
    left, right = torch.randn(2, 3, 64, 96), torch.randn(2, 3, 64, 96)
    together = encoder(torch.cat([left, right]))
    apart = torch.cat([encoder(left), encoder(right)])
    assert torch.allclose(together, apart, atol=1e-5)


def test_edge_refinement_starts_as_nearly_the_identity_and_checks_shapes():
    from sgru_ros.model.edges import EdgeRefinement

    torch.manual_seed(0)
    refinement = EdgeRefinement(width=4, window=5)
    disparity = torch.rand(2, 1, 24, 40) * 30
    left, right = torch.rand(2, 3, 24, 40) * 2 - 1, torch.rand(2, 3, 24, 40) * 2 - 1
    out = refinement(disparity, left, right)
    assert out.shape == disparity.shape
    # Centre weight 0.9989: the other 24 neighbours share 0.0011, the correction starts at 0.
    assert (out - disparity).abs().max() <= 1.2e-3 * 30
    assert (out - disparity).abs().max() > 0
    with pytest.raises(ValueError, match="B x 1 x H x W"):
        refinement(disparity[:, 0], left, right)
    with pytest.raises(ValueError, match="images must be"):
        refinement(disparity, left[:, :, :20], right[:, :, :20])
    with pytest.raises(ValueError, match="window must be odd"):
        EdgeRefinement(width=4, window=4)


def test_photometric_error_vanishes_where_the_disparity_is_right():
    from sgru_ros.model.edges import photometric_error

    torch.manual_seed(0)
    left = torch.rand(1, 3, 16, 48)
    right = torch.roll(left, shifts=-3, dims=3)  # right(x) = left(x + 3): disparity 3 everywhere
    error = photometric_error(torch.full((1, 1, 16, 48), 3.0), left, right)
    assert error[..., 3:44].abs().max() < 1e-5  # away from the borders (and the roll's wrap-around)
    wrong = photometric_error(torch.full((1, 1, 16, 48), 1.0), left, right)
    assert wrong[..., 3:44].mean() > 0.1


def test_a_raft_with_an_edge_refinement_refines_every_returned_iteration():
    torch.manual_seed(0)
    config = RaftConfig(hidden_dim=32, encoder_dims=(16, 16, 32), feature_dim=32, n_gru_layers=1,
                        edge_width=4, edge_window=3)
    model = SelectiveRAFT(config).eval()
    plain = SelectiveRAFT(RaftConfig(hidden_dim=32, encoder_dims=(16, 16, 32), feature_dim=32,
                                     n_gru_layers=1)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("edge_refine.")})
    torch.nn.init.normal_(model.edge_refine.head.weight, std=0.3)  # a trained-like head that uses its inputs
    with torch.no_grad():
        left, right = torch.rand(1, 3, 64, 128) * 255, torch.rand(1, 3, 64, 128) * 255
        refined = model(left, right, iters=3, output_iters=[1, 3])
        unrefined = plain(left, right, iters=3, output_iters=[1, 3])
        for a, b in zip(refined.disparities, unrefined.disparities):
            # Each returned iteration is refined with the normalised left and right images, in that order.
            expected = model.edge_refine(b, normalize_image(left), normalize_image(right))
            assert torch.allclose(a, expected, atol=1e-5)
            assert (a - b).abs().mean() > 0.01
            assert not torch.allclose(a, model.edge_refine(b, normalize_image(right), normalize_image(left)), atol=1e-3)
    assert torch.equal(refined.low_res, unrefined.low_res)  # the warm start for the next frame is the GRU's
    with pytest.raises(ValueError, match="edge_width"):
        RaftConfig(edge_width=-1)
