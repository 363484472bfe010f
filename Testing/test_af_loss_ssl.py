"""AF-loss (AG-CRC Eq. 8) and the SSL masks (Eq. 7, Table VII) on real torch tensors."""
from __future__ import annotations

import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from CRCTraining.agcrc.af_loss import AnatomyFocalizedLoss, ooi_from_input, set_loss_focus
from CRCTraining.agcrc.ssl import MAE_PATCH, inpaint_region, mae_region, mask_ct_channel, ssl_region


def nnunet_loss() -> DC_and_CE_loss:
    # exactly nnU-Net's default supervised loss (nnUNetTrainer._build_loss, no regions)
    return DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)


def batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(2, 3, 8, 16, 16, generator=generator)
    ooi = torch.zeros(2, 1, 8, 16, 16)
    ooi[:, :, 2:6, 4:12, 4:12] = 1
    data[:, 2:3] = ooi * 0.9 + 0.05  # interpolated OOI channel, as after augmentation
    target = torch.zeros(2, 1, 8, 16, 16)
    target[:, :, 3:5, 6:9, 6:9] = 1
    logits = torch.randn(2, 2, 8, 16, 16, generator=generator, requires_grad=True)
    return data, ooi, target, logits


def test_af_loss_has_no_gradient_outside_the_ooi():
    data, ooi, target, logits = batch()
    loss = AnatomyFocalizedLoss(nnunet_loss())
    loss.set_focus(ooi_from_input(data))
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value)
    outside = ooi.expand_as(logits) == 0
    assert logits.grad[outside].abs().max() == 0
    assert logits.grad[~outside].abs().max() > 0


def test_af_loss_equals_nnunet_loss_when_the_ooi_is_everything():
    data, _, target, logits = batch(1)
    loss = AnatomyFocalizedLoss(nnunet_loss())
    loss.set_focus(torch.ones_like(target))
    torch.testing.assert_close(loss(logits, target), nnunet_loss()(logits, target), rtol=1e-5, atol=1e-6)


def test_af_loss_at_every_deep_supervision_level():
    data, _, target, logits = batch(2)
    levels = [logits, logits[:, :, ::2, ::2, ::2].detach().requires_grad_()]
    targets = [target, target[:, :, ::2, ::2, ::2]]
    wrapped = DeepSupervisionWrapper(AnatomyFocalizedLoss(nnunet_loss()), [0.7, 0.3])
    set_loss_focus(wrapped, ooi_from_input(data))
    wrapped(levels, targets).backward()
    coarse_ooi = ooi_from_input(data)[:, :, ::2, ::2, ::2].expand_as(levels[1])
    assert levels[1].grad[coarse_ooi == 0].abs().max() == 0


def test_ct_only_batches_are_refused():
    data = torch.randn(1, 1, 4, 4, 4)
    try:
        ooi_from_input(data)
    except ValueError as error:
        assert "OOI as input channel 2" in str(error)
    else:
        raise AssertionError("a CT-only batch must be refused")


def test_ssl_masking_changes_only_bowel_wall_voxels_of_the_ct_channel():
    data, _, _, _ = batch(3)
    wall = torch.zeros(2, 1, 8, 16, 16)
    wall[:, :, 2:6, 4:12, 4] = 1  # one face of the OOI box
    masked = mask_ct_channel(data, ssl_region("bowel_wall", data, wall))
    changed = masked != data
    assert changed[:, 1:].sum() == 0  # MOS and OOI channels untouched
    assert torch.equal(changed[:, :1], wall.bool())
    # the noise is standard normal, the scale of nnU-Net's normalised CT
    assert 0.5 < masked[:, :1][wall.bool()].std() < 1.5


def test_ablation_masks_follow_table_vii():
    shape = (3, 3, 16, 64, 64)
    generator = torch.Generator().manual_seed(0)
    inpaint = inpaint_region(shape, generator)
    assert inpaint.any() and (inpaint.flatten(1).float().mean(1) <= 0.5).all()
    mae = mae_region(shape, generator)
    assert torch.allclose(mae.flatten(1).float().mean(1), torch.full((3,), 0.5))
    # constant on each 4 x 32 x 32 patch
    patches = mae[0, 0].reshape(16 // MAE_PATCH[0], MAE_PATCH[0], 64 // MAE_PATCH[1], MAE_PATCH[1], 2, 32)
    assert (patches.float().std(dim=(1, 3, 5)) == 0).all()
