"""A run killed with SIGKILL at some point and then rerun gives the result of an uninterrupted run.

Each command runs as ``crcseg`` in a child process, is killed after a delay (several delays, so the
kill lands in different steps: reading, computing, writing, between checkpoints), and is then rerun
to the end in this process. A cancelled panel run is covered too: the scene is exactly as before.
"""
from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from crcseg_child import files_at_least, run_crcseg

from CRCTraining.cli import main
from CRCTraining.data.phantoms_ct import make_phantom_dataset
from OrganGuidanceLib.io import read_image


def image_arrays(folder: Path) -> Dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): read_image(p).array for p in sorted(folder.rglob("*.nii.gz"))
            if not any(part.startswith(".") for part in p.relative_to(folder).parts)}


# --- prepare -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    # Enough cases that a kill lands in the middle of the run (a case takes ~0.1 s here).
    return make_phantom_dataset(tmp_path_factory.mktemp("killed_prepare") / "source", num_cases=12, seed=11,
                                shape_zyx=(48, 128, 128))


def prepare_argv(source: Path, workdir: Path) -> List[str]:
    return ["prepare", str(source), "-d", "971", "--name", "Killed", "--workdir", str(workdir),
            "--organs", str(source / "organsTr")]


@pytest.fixture(scope="module")
def uninterrupted(phantoms, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    assert run_crcseg(prepare_argv(phantoms, workdir), workdir)[0] == 0
    return workdir / "nnUNet_raw" / "Dataset971_Killed"


# Killed once the k-th case's first output file appears: between cases, or while a case is written.
@pytest.mark.parametrize("cases_written", [1, 5, 11])
def test_prepare_killed_then_rerun_equals_an_uninterrupted_run(phantoms, uninterrupted, tmp_path, cases_written):
    workdir = tmp_path / "work"
    images = workdir / "nnUNet_raw" / "Dataset971_Killed" / "imagesTr"
    code, _ = run_crcseg(prepare_argv(phantoms, workdir), tmp_path,
                         kill_when=files_at_least(images, "*_0000.nii.gz", cases_written))
    assert code == -signal.SIGKILL  # it was killed mid-run, not finished
    assert main(prepare_argv(phantoms, workdir)) == 0
    folder = workdir / "nnUNet_raw" / "Dataset971_Killed"
    expected, found = image_arrays(uninterrupted), image_arrays(folder)
    assert found.keys() == expected.keys(), (code, sorted(found), sorted(expected))
    assert all(np.array_equal(found[k], expected[k]) for k in expected), code
    assert json.loads((folder / "dataset.json").read_text()) == json.loads((uninterrupted / "dataset.json").read_text())
    assert not list(folder.rglob(".tmp-*"))  # the killed run's temporary files were cleared


# --- usam-train --------------------------------------------------------------------------------
USAM_OPTIONS = ["--iterations", "6", "--checkpoint-every", "2", "--batch-size", "2", "--image-size", "32",
                "--device", "cpu", "--threads", "1", "--workers", "0", "--seed", "3", "--no-augmentation"]


@pytest.fixture(scope="module")
def usam_slices(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("killed_usam") / "slices"
    assert main(["usam-slices", "--phantom", "2", "--seed", "0", "-o", str(folder)]) == 0
    return folder


def final_weights(run: Path) -> Dict[str, "object"]:
    from CRCSegmentationLib.usam import read_usam_checkpoint

    model = read_usam_checkpoint(run / "usam_final.pt")[0]
    return model.state_dict()


@pytest.mark.slow
def test_usam_train_killed_then_rerun_equals_an_uninterrupted_run(usam_slices, tmp_path):
    import torch

    assert main(["usam-train", str(usam_slices), "-o", str(tmp_path / "reference"), *USAM_OPTIONS]) == 0
    killed = tmp_path / "killed"
    # Killed as soon as its first resumable state (iteration 2 of 6) is in place.
    code, _ = run_crcseg(["usam-train", str(usam_slices), "-o", str(killed), *USAM_OPTIONS], tmp_path,
                         kill_when=files_at_least(killed, "checkpoint_latest.pt", 1))
    assert code == -signal.SIGKILL
    assert (killed / "checkpoint_latest.pt").is_file()  # it had saved a resumable state
    assert main(["usam-train", str(usam_slices), "-o", str(killed), *USAM_OPTIONS]) == 0
    reference, resumed = final_weights(tmp_path / "reference"), final_weights(killed)
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


# --- a cancelled panel run leaves the scene as it was ------------------------------------------
def scene_state(scene) -> List[tuple]:
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return [(node.GetID(), node.GetName(), node.GetMTime()) for node in nodes]


def test_a_cancelled_segmentation_leaves_the_scene_exactly_as_before(mrml_scene, ct, organs):
    from CRCSegmentationLib.core.segmentation import SegmentationParameters
    from CRCSegmentationLib.logic import CRCSegmentationLogic, CRCSegmentationSettings
    from OrganGuidanceLib.logic import OrganGuidanceSettings, OrganSourceChoice
    from OrganGuidanceLib.mrml import add_volume_node
    from OrganGuidanceLib.progress import RunCancelled

    ct_node = add_volume_node(mrml_scene, ct, "CT")
    organ_node = add_volume_node(mrml_scene, organs, "organs", labelmap=True)
    settings = CRCSegmentationSettings(
        model="demo_phantom", guidance_source="compute",
        organ_guidance=OrganGuidanceSettings(primary=OrganSourceChoice(kind="node", node=organ_node)),
        segmentation=SegmentationParameters(device="cpu", min_tile_weight=0.0))
    logic = CRCSegmentationLogic(mrml_scene)
    before = scene_state(mrml_scene)
    job = logic.prepare(ct_node, settings)
    cancel = threading.Event()

    def progress(stage: str, fraction) -> None:
        if stage == "tumor model":
            threading.Timer(0.5, cancel.set).start()

    with pytest.raises(RunCancelled):
        logic.compute(job, cancel, progress)
    assert scene_state(mrml_scene) == before
