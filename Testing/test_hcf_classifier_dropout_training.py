"""HCF slice-classifier training uses the public code's Dropout(0.2) before the last layer by default
(``HCFTrainingSettings.classifier_dropout``), and a run records it so a changed value is not resumed silently."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from CRCSegmentationLib.networks.hcf import DropoutLinear
from CRCTraining.hcf.data import load_slices
from CRCTraining.hcf.settings import HCFTrainingSettings
from CRCTraining.hcf.tasks import SliceClassifierTask


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from CRCTraining.data.phantoms_ct import make_phantom_dataset

    folder = make_phantom_dataset(tmp_path_factory.mktemp("hcf_dropout"), num_cases=2, seed=3)
    settings = HCFTrainingSettings(output=folder / "run", images=folder / "imagesTr", labels=folder / "labelsTr",
                                   fold=None, size=64, device="cpu")
    return settings, load_slices(settings)


def test_classifier_training_has_the_dropout_by_default(data):
    settings, slices = data
    task = SliceClassifierTask(settings, slices)
    model = task.build_model()
    assert isinstance(model.fc, DropoutLinear) and model.fc.dropout.p == 0.2
    assert task.resume_settings()["classifier_dropout"] == 0.2
    model.train()
    batch = torch.stack([slices[i]["image"] for i in range(4)])  # (4, 1, 64, 64)
    with torch.no_grad():
        assert (model(batch) - model(batch)).abs().max() > 0  # dropout is active while training

    off = HCFTrainingSettings(**{**settings.__dict__, "classifier_dropout": 0.0})
    plain = SliceClassifierTask(off, slices).build_model()
    assert type(plain.fc) is nn.Linear
    assert list(plain.state_dict()) == list(model.state_dict())
