"""Model bundles say what they are (format 2), format 1 keeps working, and the Lib builds our trainers' networks.

Bundles are copies of the shipped demonstration bundle (format 1) with their metadata or checkpoint
changed; every error must name the file and the problem.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from CRCSegmentationLib.core.bundle import FORMAT_VERSION, METADATA_FILE, read_metadata
from CRCSegmentationLib.core.checkpoints import load_checkpoint
from CRCSegmentationLib.core.errors import ModelError
from CRCSegmentationLib.core.segmentation import SegmentationParameters
from CRCSegmentationLib.demo.ct import demo_model_path
from CRCSegmentationLib.models.open import open_model
from CRCSegmentationLib.networks.nnunet_architectures import NNUNET_DEFAULT
from OrganGuidanceLib.checksum import sha256_of

CHECKPOINT = "fold_all/checkpoint_final.pth"


@pytest.fixture
def bundle(tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(demo_model_path(), copy)
    return copy


def edit_metadata(folder: Path, **changes) -> dict:
    path = folder / METADATA_FILE
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return data


def test_format_1_demo_bundle_reads_as_a_ct_nnunet_tumor_model():
    metadata = read_metadata(demo_model_path())
    assert metadata.format_version == 1 and metadata.tumor_labels == []
    model = open_model("demo_phantom")  # a catalogue name
    assert (model.kind, model.modality, model.tumor_labels, model.network) == ("nnunet", "CT", [1], "")
    assert model.folder == demo_model_path()


def test_format_2_metadata_is_read_as_written(bundle):
    edit_metadata(bundle, format_version=FORMAT_VERSION, tumor_labels=["tumor"], network=NNUNET_DEFAULT)
    model = open_model(bundle)
    assert (model.tumor_labels, model.network, model.metadata.format_version) == ([1], NNUNET_DEFAULT, 2)


@pytest.mark.parametrize("changes, words", [
    ({"kind": "usam"}, ["a U-SAM bundle's checkpoint", "usam.pt"]),  # an nnU-Net bundle relabelled
    ({"kind": "hcf"}, ["hcf.json is missing"]),  # an nnU-Net bundle relabelled: HCF's own file is asked for
    ({"kind": "unet2000"}, ["kind 'unet2000'", "not one of"]),
    ({"modality": "PET"}, ["modality 'PET'"]),
    ({"format_version": 99}, ["bundle format 99", "newer"]),
    ({"tumor_labels": ["liver"]}, ["['liver'] are not among the labels"]),
    ({"labels": {"background": 0, "rectum": 1, "tumor_core": 2}}, ["no tumor label"]),
    ({"network": "rcsegnext_v9"}, ["network 'rcsegnext_v9'"]),
    ({"trainer": ""}, ["needs ['trainer']"]),
])
def test_bad_metadata_is_refused_with_the_reason(bundle, changes, words):
    edit_metadata(bundle, **changes)
    with pytest.raises(ModelError) as raised:
        open_model(bundle)
    message = str(raised.value)
    assert all(w in message for w in words), message
    assert str(bundle) in message


def test_a_usam_bundle_opens_but_is_no_3d_segmenter(tmp_path):
    from CRCSegmentationLib.networks.usam import USAM, USAMConfig
    from CRCSegmentationLib.usam.bundle import write_usam_bundle

    folder = write_usam_bundle(tmp_path / "usam", USAM(USAMConfig.preset("small")), "tiny", "0.0.1",
                               "test model; not for clinical use", demonstration=True)
    model = open_model(folder)
    assert (model.kind, model.tumor_labels, model.weight_files) == ("usam", [2], [folder / "usam.pt"])
    with pytest.raises(ModelError, match="a U-SAM checkpoint is for point prompts"):
        model.segmenter()


def test_metadata_that_is_not_an_object_is_refused(bundle):
    (bundle / METADATA_FILE).write_text("[1, 2]")
    with pytest.raises(ModelError, match="must be a JSON object"):
        open_model(bundle)


def test_a_model_name_that_is_neither_folder_nor_catalogue_entry(tmp_path):
    with pytest.raises(ModelError, match="neither a model folder nor a catalogue model.*demo_phantom"):
        open_model("no_such_model")
    (tmp_path / "weights.pth").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        open_model(tmp_path / "weights.pth")


def rename_trainer(bundle: Path, trainer: str, network: str) -> dict:
    """The checkpoint re-saved with another trainer name (as a user's own trainer subclass would store)."""
    path = bundle / CHECKPOINT
    checkpoint = load_checkpoint(path)
    checkpoint["trainer_name"] = trainer
    torch.save(checkpoint, path)
    edit_metadata(bundle, format_version=FORMAT_VERSION, trainer=trainer, network=network,
                  checkpoint_sha256={CHECKPOINT: sha256_of(path)})
    return checkpoint["network_weights"]


def test_a_declared_network_builds_a_trainer_nobody_defines(bundle):
    """Format 2's ``network`` lets a bundle predict whatever its trainer was called (no CRCTraining lookup)."""
    weights = rename_trainer(bundle, "nnUNetTrainerSomeoneElses", NNUNET_DEFAULT)
    segmenter = open_model(bundle).segmenter(SegmentationParameters(device="cpu"))
    network = segmenter._predictor(torch.device("cpu")).network
    loaded = network.state_dict()
    assert set(loaded) == set(weights)
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_an_unknown_trainer_without_a_declared_network_is_a_clear_error(bundle):
    rename_trainer(bundle, "nnUNetTrainerSomeoneElses", "")
    model = open_model(bundle)
    with pytest.raises(ModelError, match="nnUNetTrainerSomeoneElses.*nnUNet_extTrainer"):
        model.segmenter(SegmentationParameters(device="cpu"))
