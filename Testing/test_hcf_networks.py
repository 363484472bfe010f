"""HCF's networks (Shi et al., CMIG 2024): slice classifier, SANet and its Spatial Alignment Module (Eq. 1-3)."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from CRCSegmentationLib.networks.hcf import (
    PAPER_HCF_PARAMETERS_M,
    PAPER_SANET_PARAMETERS_M,
    PUBLIC_CODE_SANET_PARAMETERS_M,
    PUBLIC_FINAL_DROPOUT,
    SLICE_CLASSIFIER_PARAMETERS_M,
    DropoutLinear,
    SANet,
    SpatialAlignment,
    align_upsample,
    build_hcf,
    build_sanet,
    build_slice_classifier,
    identity_grid,
    parameter_count,
)
from CRCSegmentationLib.networks.hcf.sanet import OUTPUT_STRIDE, is_valid_input_size


@pytest.fixture(scope="module")
def sanet() -> SANet:
    torch.manual_seed(0)
    return build_sanet(num_classes=2, in_channels=1)


def millions(count: int) -> float:
    return count / 1e6


# --- parameter counts (paper Table 2, public code) --------------------------------------------------------------
def test_parameter_counts_match_the_public_code_and_table_2(sanet):
    classifier = build_slice_classifier(1, 2)
    ours_sanet, ours_classifier = parameter_count(sanet), parameter_count(classifier)
    print(f"\nSANet {ours_sanet:,} ({millions(ours_sanet):.2f} M; public code {PUBLIC_CODE_SANET_PARAMETERS_M} M, "
          f"paper {PAPER_SANET_PARAMETERS_M} M); slice classifier {ours_classifier:,} "
          f"({millions(ours_classifier):.2f} M; {SLICE_CLASSIFIER_PARAMETERS_M} M); HCF "
          f"{millions(ours_sanet + ours_classifier):.2f} M (paper {PAPER_HCF_PARAMETERS_M} M)")
    assert ours_sanet == 12_712_386  # the breakdown in sanet's docstring
    assert abs(millions(ours_sanet) / PUBLIC_CODE_SANET_PARAMETERS_M - 1) < 0.01
    assert abs(millions(ours_sanet) / PAPER_SANET_PARAMETERS_M - 1) < 0.01
    assert ours_classifier == 11_171_266
    assert abs(millions(ours_classifier) / SLICE_CLASSIFIER_PARAMETERS_M - 1) < 0.01
    assert abs(millions(ours_sanet + ours_classifier) / PAPER_HCF_PARAMETERS_M - 1) < 0.01
    parts = {"encoder": 11_170_240, "ppm": 394_496, "lateral": 58_112, "align": 3 * 18_688, "smooth": 443_136,
             "fuse": 590_080, "classifier": 258}
    assert {name: parameter_count(getattr(sanet, name)) for name in parts} == parts


def test_the_classifier_is_torchvisions_resnet18_with_one_input_channel():
    from torchvision.models import resnet18

    classifier = build_slice_classifier(1, 2)
    reference = resnet18(weights=None, num_classes=2)
    assert classifier.conv1.weight.shape == (64, 1, 7, 7) and classifier.fc.out_features == 2
    shapes = {k: v.shape for k, v in classifier.state_dict().items() if k != "conv1.weight"}
    assert shapes == {k: v.shape for k, v in reference.state_dict().items() if k != "conv1.weight"}
    logits = classifier(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 2)
    stage_one, stage_two = build_hcf()
    assert parameter_count(stage_one) == parameter_count(classifier) and isinstance(stage_two, SANet)
    with pytest.raises(ValueError):
        build_slice_classifier(1, 1)


def test_classifier_has_the_public_dropout_in_training_only_with_unchanged_keys():
    """The public code's Dropout(0.2) before the last layer (cls/config.py drop_rate): active in train mode, the
    identity in eval mode, and invisible in the state dict (checkpoints with and without it load strictly)."""
    torch.manual_seed(3)
    with_dropout = build_slice_classifier(1, 2)
    torch.manual_seed(3)
    without = build_slice_classifier(1, 2, dropout=0.0)
    assert isinstance(with_dropout.fc, DropoutLinear) and with_dropout.fc.dropout.p == PUBLIC_FINAL_DROPOUT == 0.2
    assert type(without.fc) is nn.Linear
    assert list(with_dropout.state_dict()) == list(without.state_dict())  # the same keys, in the same order
    assert all(torch.equal(a, b) for a, b in zip(with_dropout.state_dict().values(), without.state_dict().values()))
    assert parameter_count(with_dropout) == parameter_count(without) == 11_171_266
    with_dropout.load_state_dict(without.state_dict(), strict=True)
    without.load_state_dict(with_dropout.state_dict(), strict=True)
    x = torch.randn(4, 1, 64, 64)
    with_dropout.train(), without.train()
    with torch.no_grad():
        first, second = with_dropout(x), with_dropout(x)
        plain_first, plain_second = without(x), without(x)  # batch statistics alone do not change between passes
    assert (first - second).abs().max() > 1e-3
    torch.testing.assert_close(plain_first, plain_second)
    with_dropout.eval(), without.eval()  # both saw the same batches: the same running statistics
    with torch.no_grad():
        evaluated = with_dropout(x)
        torch.testing.assert_close(evaluated, with_dropout(x), rtol=0, atol=0)
        torch.testing.assert_close(evaluated, without(x))
    with pytest.raises(ValueError, match="dropout must be in"):
        build_slice_classifier(1, 2, dropout=1.0)


def test_the_bundle_builds_the_classifier_with_dropout_and_loads_a_checkpoint_without_it_strictly():
    from CRCSegmentationLib.hcf.bundle import BUILDER_ARGS, CLASSIFIER, NETWORKS, HCFStage

    built = HCFStage(CLASSIFIER, NETWORKS[CLASSIFIER], dict(BUILDER_ARGS[CLASSIFIER]), ["0"]).build()
    assert isinstance(built.fc, DropoutLinear)
    saved = build_slice_classifier(1, 2, dropout=0.0).state_dict()  # a classifier trained before the dropout
    built.load_state_dict(saved, strict=True)
    assert torch.equal(built.fc.weight, saved["fc.weight"])


# --- encoder: output stride 16 -----------------------------------------------------------------------------------
def test_encoder_strides_and_layer4_dilation(sanet):
    with torch.no_grad():
        features = sanet.encoder(torch.randn(1, 1, 64, 96))
    assert [tuple(f.shape) for f in features] == [(1, 64, 16, 24), (1, 128, 8, 12), (1, 256, 4, 6), (1, 512, 4, 6)]
    layer4 = sanet.encoder.layer4
    three_by_three = [m for m in layer4.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(three_by_three) == 4
    assert all(m.stride == (1, 1) and m.dilation == (2, 2) and m.padding == (2, 2) for m in three_by_three)
    assert layer4[0].downsample[0].stride == (1, 1) and layer4[0].downsample[0].kernel_size == (1, 1)
    # layers 1-3 keep torchvision's strides and no dilation
    for stage in (sanet.encoder.layer1, sanet.encoder.layer2, sanet.encoder.layer3):
        assert all(m.dilation == (1, 1) for m in stage.modules() if isinstance(m, nn.Conv2d))
    assert not hasattr(sanet.encoder, "fc") and not hasattr(sanet.encoder, "avgpool")


# --- SANet forward / backward --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (2, 1, 48, 80)])
def test_sanet_forward_shapes(sanet, shape):
    sanet.eval()
    with torch.no_grad():
        logits = sanet(torch.randn(*shape))
    assert logits.shape == (shape[0], 2, *shape[2:]) and torch.isfinite(logits).all()


def test_sanet_backward_reaches_every_parameter():
    torch.manual_seed(1)
    network = SANet(num_classes=3, in_channels=2).train()
    logits = network(torch.randn(2, 2, 64, 64))
    assert logits.shape == (2, 3, 64, 64)
    F.cross_entropy(logits, torch.randint(0, 3, (2, 64, 64))).backward()
    missing = [name for name, p in network.named_parameters() if p.grad is None]
    zero = [name for name, p in network.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0]
    assert not missing and not zero, (missing, zero)
    assert all(torch.isfinite(p.grad).all() for p in network.parameters())


@pytest.mark.parametrize("shape", [(2, 1, 60, 64), (2, 1, 64, 72), (2, 3, 64, 64), (1, 64, 64), (2, 1, 8, 8)])
def test_sanet_refuses_shapes_it_cannot_take(sanet, shape):
    with pytest.raises(ValueError, match="multiples of 16; got shape " + re.escape(str(shape))):
        sanet(torch.randn(*shape))



@pytest.mark.parametrize("size, valid", [(16, True), (48, True), (512, True), (0, False), (8, False), (50, False),
                                         (-16, False), (True, False), (64.0, False), ("64", False)])
def test_one_input_size_rule_from_the_output_stride(sanet, size, valid):
    """The bundle and training check sizes with this rule; the network's own check agrees with it."""
    assert OUTPUT_STRIDE == 16 and is_valid_input_size(size) is valid
    if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
        try:
            sanet.check_input(torch.empty(1, 1, size, size))
            accepted = True
        except ValueError:
            accepted = False
        assert accepted is valid

# --- Spatial Alignment Module (Eq. 1-3) -----------------------------------------------------------------------------
def test_identity_grid_is_pixel_centres():
    grid = identity_grid(2, 4)
    assert grid.shape == (1, 2, 4, 2)
    torch.testing.assert_close(grid[0, 0, :, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))  # x along the width
    torch.testing.assert_close(grid[0, :, 0, 1], torch.tensor([-0.5, 0.5]))  # y along the height


@pytest.mark.parametrize("deep_size, size", [((4, 6), (8, 12)), ((5, 7), (16, 12)), ((8, 8), (8, 8)),
                                             ((3, 3), (12, 12))])
def test_zero_offset_is_plain_bilinear_upsampling(deep_size, size):
    torch.manual_seed(2)
    deep = torch.randn(2, 3, *deep_size, dtype=torch.float64)
    aligned = align_upsample(deep, torch.zeros(2, 2, *size, dtype=torch.float64), size)
    reference = F.interpolate(deep, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(aligned, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_constant_offset_shifts_by_whole_pixels(k):
    torch.manual_seed(3)
    deep = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    size = (12, 10)
    reference = F.interpolate(deep, size=size, mode="bilinear", align_corners=False)
    offset = torch.zeros(1, 2, *size, dtype=torch.float64)
    offset[:, 0] = k  # +k output pixels along x
    moved = align_upsample(deep, offset, size)
    torch.testing.assert_close(moved[..., :size[1] - k], reference[..., k:], rtol=0, atol=1e-12)
    offset = torch.zeros(1, 2, *size, dtype=torch.float64)
    offset[:, 1] = -k  # -k output pixels along y
    moved = align_upsample(deep, offset, size)
    torch.testing.assert_close(moved[..., k:, :], reference[..., :size[0] - k, :], rtol=0, atol=1e-12)


def test_half_pixel_offset_interpolates_between_neighbours():
    deep = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    offset = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    offset[:, 0] = 0.5
    moved = align_upsample(deep, offset, (6, 6))
    torch.testing.assert_close(moved[..., :-1], (deep[..., :-1] + deep[..., 1:]) / 2, rtol=0, atol=1e-12)


def test_alignment_module_shapes_zero_offset_and_gradients():
    torch.manual_seed(4)
    module = SpatialAlignment(16)
    assert module.compress_shallow.out_channels == module.compress_deep.out_channels == 8  # C / 2
    assert parameter_count(module) == 2 * 16 * 8 + 9 * 16 * 2
    shallow, deep = torch.randn(2, 16, 12, 10), torch.randn(2, 16, 6, 5, requires_grad=True)
    out = module(shallow, deep)
    assert out.shape == (2, 16, 12, 10) and module.predict_offset(shallow, deep).shape == (2, 2, 12, 10)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert deep.grad is not None and deep.grad.abs().sum() > 0
    with torch.no_grad():
        module.offset.weight.zero_()  # Δ = 0 -> bilinear upsampling of the uncompressed deep map
        torch.testing.assert_close(module(shallow, deep), F.interpolate(deep, size=(12, 10), mode="bilinear",
                                                                         align_corners=False))
        # the module's Δ is in the public code's units (G = Ω + Δ / (W, H)): Δ = 2 moves by one output pixel
        module.predict_offset = lambda shallow, deep: torch.full((2, 2, 12, 10), 2.0)
        reference = F.interpolate(deep, size=(12, 10), mode="bilinear", align_corners=False)
        torch.testing.assert_close(module(shallow, deep)[..., :-1, :-1], reference[..., 1:, 1:])
    with pytest.raises(ValueError):
        module(torch.randn(2, 8, 12, 10), deep)
    with pytest.raises(ValueError):
        align_upsample(deep, torch.zeros(2, 2, 12, 10), (10, 12))
