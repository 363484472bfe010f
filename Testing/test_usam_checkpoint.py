"""SAM ViT-B weights mapped onto U-SAM (every key accounted for) and U-SAM's own checkpoints."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from CRCSegmentationLib.networks.usam import USAMConfig
from CRCSegmentationLib.usam import (
    load_usam_checkpoint,
    read_usam_checkpoint,
    save_usam_checkpoint,
    usam_with_sam_weights,
)
from CRCSegmentationLib.usam.checkpoint import CHECKPOINT_FORMAT
from CRCSegmentationLib.usam.sam_weights import USAM_ONLY_PREFIXES
from OrganGuidanceLib.validation import InputError

GLOBAL_BLOCKS = (2, 5, 8, 11)


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    """A checkpoint laid out like sam_vit_b_01ec64.pth, saved from segment_anything's own ViT-B (random weights)."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    state = sam_model_registry["vit_b"]().state_dict()
    for key, value in state.items():  # SAM zero-initialises pos_embed and rel_pos: make them checkable
        if "pos" in key and value.is_floating_point():
            value.copy_(torch.randn_like(value))
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def mapped(sam_file):
    path, _ = sam_file
    return usam_with_sam_weights(USAMConfig(), sam_checkpoint=path)


def test_every_key_is_accounted_for(sam_file, mapped):
    _, sam_state = sam_file
    model, report = mapped
    ours = set(model.state_dict())
    used = set(report.loaded) | set(report.resized)
    assert not report.warnings
    assert set(report.loaded).isdisjoint(report.resized) and used.isdisjoint(report.skipped)
    assert used | set(report.skipped) == set(sam_state)  # every SAM key: loaded, resized or skipped
    assert used | set(report.missing) == ours and used.isdisjoint(report.missing)  # every model key
    assert set(report.missing) == {k for k in ours if k.startswith(USAM_ONLY_PREFIXES)}  # only the new parts
    assert {k.split(".")[0] for k in report.missing} == {"cnn_encoder", "mask_decoder"}
    for prefix in ("image_encoder.patch_embed.", "mask_decoder.mask_tokens.", "mask_decoder.iou_token.",
                   "mask_decoder.iou_prediction_head.", "mask_decoder.output_upscaling.",
                   "mask_decoder.output_hypernetworks_mlps."):
        assert any(k.startswith(prefix) for k in report.skipped), prefix
    assert all(k.startswith("mask_decoder.") or k.startswith("image_encoder.patch_embed.") for k in report.skipped)
    expected_resized = {"image_encoder.pos_embed"} | {
        f"image_encoder.blocks.{b}.attn.rel_pos_{a}" for b in GLOBAL_BLOCKS for a in "hw"
    }
    assert set(report.resized) == expected_resized
    assert any(k.startswith("prompt_encoder.") for k in report.loaded)
    assert any(k.startswith("mask_decoder.transformer.") for k in report.loaded)


def test_loaded_and_resized_values(sam_file, mapped):
    _, sam_state = sam_file
    model, report = mapped
    ours = model.state_dict()
    for key in report.loaded:
        assert torch.equal(ours[key], sam_state[key]), key
    assert tuple(ours["image_encoder.blocks.0.attn.rel_pos_h"].shape) == (27, 64)  # windowed: copied
    # Independent formulations of the resizes: bicubic on the 64 x 64 grid; rel_pos as an image resized in one axis.
    pos = sam_state["image_encoder.pos_embed"].permute(0, 3, 1, 2)
    expected_pos = F.interpolate(pos, size=(14, 14), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(ours["image_encoder.pos_embed"], expected_pos)
    for block in GLOBAL_BLOCKS:
        key = f"image_encoder.blocks.{block}.attn.rel_pos_w"
        table = sam_state[key][None, None]  # 1 x 1 x 127 x 64
        expected = F.interpolate(table, size=(27, 64), mode="bilinear", align_corners=False)[0, 0]
        torch.testing.assert_close(ours[key], expected)
    assert not any(p.requires_grad for p in model.prompt_encoder.parameters())


def test_sam_file_errors(sam_file, tmp_path):
    path, sam_state = sam_file
    with pytest.raises(InputError, match=r"not found.*dl\.fbaipublicfiles\.com.*01ec64"):
        usam_with_sam_weights(sam_checkpoint=tmp_path / "sam_vit_b_01ec64.pth")
    truncated = tmp_path / "truncated.pth"
    with open(path, "rb") as source:
        truncated.write_bytes(source.read(1 << 20))
    with pytest.raises(InputError, match=r"truncated\.pth.*truncated or corrupt"):
        usam_with_sam_weights(sam_checkpoint=truncated)
    # A ViT-L-shaped image encoder (width 1024, 24 blocks), kept tiny.
    fake = {k: v for k, v in sam_state.items() if not k.startswith("image_encoder.")}
    fake["image_encoder.pos_embed"] = torch.zeros(1, 4, 4, 1024)
    fake.update({f"image_encoder.blocks.{i}.norm1.weight": torch.ones(1024) for i in range(24)})
    vit_l = tmp_path / "sam_vit_l.pth"
    torch.save(fake, vit_l)
    with pytest.raises(InputError, match=r"width 1024 and 24 blocks.*ViT-L"):
        usam_with_sam_weights(sam_checkpoint=vit_l)
    not_sam = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, not_sam)
    with pytest.raises(InputError, match="not a SAM state dict"):
        usam_with_sam_weights(sam_checkpoint=not_sam)


def test_no_checkpoint_is_random_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        model, report = usam_with_sam_weights(USAMConfig(image_size=32))
    assert report.warnings and "random" in report.warnings[0]
    assert "random" in caplog.text
    assert set(report.missing) == set(model.state_dict()) and not report.loaded


# --- our own checkpoints -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    config = USAMConfig(image_size=32, num_classes=2, class_names=("background", "tumor"), hu_window=(-100.0, 200.0))
    model, _ = usam_with_sam_weights(config)
    with torch.no_grad():  # make BatchNorm statistics non-trivial, as after training
        model.train()(torch.rand(2, 3, 32, 32))
    return model.eval()


def test_round_trip(small_model, tmp_path):
    path = tmp_path / "sub" / "usam.pt"
    save_usam_checkpoint(path, small_model, extra={"epoch": 7, "metrics": {"dice": [0.5, 0.6]}})
    assert [p.name for p in path.parent.iterdir()] == ["usam.pt"]  # atomic write leaves no temporary file
    loaded, extra = read_usam_checkpoint(path)
    assert loaded.config == small_model.config and not loaded.training
    assert extra == {"epoch": 7, "metrics": {"dice": [0.5, 0.6]}}
    assert not any(p.requires_grad for p in loaded.prompt_encoder.parameters())
    images = torch.rand(1, 3, 32, 32)
    coords, labels = torch.tensor([[[20.0, 5.0], [3.0, 3.0]]]), torch.tensor([[1, 0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, coords, labels), small_model(images, coords, labels), rtol=0, atol=0)
    assert load_usam_checkpoint(path).config.hu_window == (-100.0, 200.0)


def test_checkpoint_errors(small_model, sam_file, tmp_path):
    with pytest.raises(InputError, match=r"missing\.pt: file not found"):
        load_usam_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a torch file" * 100)
    with pytest.raises(InputError, match=r"corrupt\.pt: cannot be read"):
        load_usam_checkpoint(corrupt)
    good = tmp_path / "good.pt"
    save_usam_checkpoint(good, small_model)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match=r"truncated\.pt: cannot be read"):
        load_usam_checkpoint(truncated)
    with pytest.raises(InputError, match=r"not a 'crcseg-usam' checkpoint.*SAM checkpoint"):
        load_usam_checkpoint(sam_file[0])
    payload = torch.load(good, weights_only=True)
    for change, message in (
        ({"version": 99}, "version 99"),
        ({"config": {**payload["config"], "image_size": 48}}, "do not fit"),
        ({"config": {"image_size": 32}}, "does not have the fields"),
        ({"format": "other"}, "not a"),
    ):
        bad = tmp_path / "bad.pt"
        torch.save({**payload, **change}, bad)
        with pytest.raises(InputError, match=message):
            load_usam_checkpoint(bad)
    with pytest.raises(InputError, match="reserved"):
        save_usam_checkpoint(tmp_path / "x.pt", small_model, extra={"model": 1})
    with pytest.raises(InputError, match=r"extra\['rng'\] is a Generator"):
        save_usam_checkpoint(tmp_path / "x.pt", small_model, extra={"rng": torch.Generator()})
    assert payload["format"] == CHECKPOINT_FORMAT
    with pytest.raises(InputError, match="U-SAM checkpoint; load it with load_usam_checkpoint"):
        usam_with_sam_weights(sam_checkpoint=good)


# --- sizes in checkpoints, bundles and load_usam_model ---------------------------------------


@pytest.fixture(scope="module")
def small_preset():
    torch.manual_seed(1)
    return usam_with_sam_weights(USAMConfig.preset("small"))[0].eval()


def test_sizes_round_trip_and_a_version_1_checkpoint_reads_as_vit_b(small_preset, small_model, tmp_path):
    path = tmp_path / "small.pt"
    save_usam_checkpoint(path, small_preset)
    payload = torch.load(path, weights_only=True)
    assert payload["version"] == 2 and payload["config"]["vit_depth"] == 2
    loaded = load_usam_checkpoint(path)
    assert loaded.config == small_preset.config and len(loaded.image_encoder.blocks) == 2
    # Version 1 (before the size fields): a ViT-B config without them.
    old = tmp_path / "v1.pt"
    save_usam_checkpoint(old, small_model)
    payload = torch.load(old, weights_only=True)
    config = {k: v for k, v in payload["config"].items() if k in ("image_size", "num_classes", "class_names",
                                                                   "hu_window")}
    torch.save({**payload, "version": 1, "config": config}, old)
    assert load_usam_checkpoint(old).config == small_model.config and small_model.config.is_vit_b
    torch.save({**payload, "version": 1}, old)  # a version 1 file cannot hold size fields
    with pytest.raises(InputError, match="does not have the fields"):
        load_usam_checkpoint(old)


def test_sam_weights_fit_vit_b_only(sam_file):
    with pytest.raises(InputError, match=r"not ViT-B.*vit_embed_dim.*preset\('vit-b'\)"):
        usam_with_sam_weights(USAMConfig.preset("small"), sam_checkpoint=sam_file[0])


def test_bundle_and_load_usam_model(small_preset, tmp_path):
    from CRCSegmentationLib.core.bundle import read_metadata
    from CRCSegmentationLib.core.errors import ModelError
    from CRCSegmentationLib.models.usam import load_usam_model
    from CRCSegmentationLib.usam.bundle import load_usam_bundle, write_usam_bundle

    folder = write_usam_bundle(tmp_path / "bundle", small_preset, "tiny", "0.1.0", "test; not for clinical use",
                               demonstration=True)
    metadata = read_metadata(folder)
    assert (metadata.kind, metadata.checkpoint, metadata.tumor_labels) == ("usam", "usam.pt", ["tumor"])
    assert read_usam_checkpoint(folder / "usam.pt")[1]["demonstration"] is True
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        expected = small_preset(images)
        for model in (load_usam_bundle(folder), load_usam_model(folder), load_usam_model(str(folder / "usam.pt"))):
            torch.testing.assert_close(model(images), expected, rtol=0, atol=0)
    with pytest.raises(FileExistsError):
        write_usam_bundle(folder, small_preset, "tiny", "0.1.0", "", demonstration=True)
    for source, words in ((tmp_path / "none.pt", "no such checkpoint file"),
                          ("no_such_model", "neither a model folder nor a catalogue model"),
                          ("demo_phantom", "not a U-SAM"), (tmp_path, "not a model bundle")):
        with pytest.raises(ModelError, match=words):
            load_usam_model(source)
    (folder / "usam.pt").write_bytes(b"changed")
    with pytest.raises(ModelError, match="SHA-256"):
        load_usam_model(folder)
