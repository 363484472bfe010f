"""The device choice (issue 21): auto is CUDA, then Apple's MPS, then the CPU; a GPU asked for but absent is an error."""
import pytest
import torch

from OrganGuidanceLib.choices import DEVICE_LABELS, DEVICES
from OrganGuidanceLib.device import mps_available, resolve_device
from OrganGuidanceLib.providers import TotalSegmentatorProvider
from OrganGuidanceLib.validation import InputError


def test_every_device_has_a_panel_label_and_mps_is_offered():
    assert DEVICES[0] == "auto" and {"cuda", "mps", "cpu"} == set(DEVICES[1:]) and set(DEVICE_LABELS) == set(DEVICES)


def test_auto_takes_cuda_then_mps_then_the_cpu():
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(mps_available(), reason="this machine has an Apple GPU")
def test_mps_without_an_apple_gpu_is_a_clear_error():
    with pytest.raises(InputError, match=r"device 'mps' was requested but no Apple GPU \(MPS\)"):
        resolve_device("mps")


def test_an_unknown_device_names_the_choices():
    with pytest.raises(InputError, match="device 'gpu' is not one of auto, cuda, mps, cpu"):
        resolve_device("gpu")


def test_totalsegmentator_gets_its_own_device_names():
    assert TotalSegmentatorProvider(device="cuda").totalsegmentator_device() == "gpu"
    assert TotalSegmentatorProvider(device="mps").totalsegmentator_device() == "mps"
    assert TotalSegmentatorProvider(device="cpu").totalsegmentator_device() == "cpu"
    auto = TotalSegmentatorProvider(device="auto").totalsegmentator_device()
    assert auto == {"cuda": "gpu"}.get(resolve_device("auto").type, resolve_device("auto").type)


def test_a_gpu_failure_is_retried_on_the_cpu_and_an_input_error_is_not():
    from CRCSegmentationLib.core.running import is_gpu_failure, with_cpu_fallback

    missing = NotImplementedError("The operator 'aten::foo' is not currently implemented for the MPS device.")
    assert is_gpu_failure(missing, "mps") and not is_gpu_failure(missing, "cpu")
    assert is_gpu_failure(RuntimeError("CUDA error: an illegal memory access"), "cuda")
    assert not is_gpu_failure(ValueError("bad input"), "mps")

    def run(device):  # fails on the (pretended) GPU, works on the CPU
        if device.type != "cpu":
            raise missing
        return "done"

    warnings = []
    result, used = with_cpu_fallback(run, torch.device("mps"), warnings)
    assert (result, used.type) == ("done", "cpu") and "run on the CPU instead" in warnings[0]

    def bad_input(device):
        raise ValueError("the CT is 2D")

    with pytest.raises(ValueError, match="2D"):
        with_cpu_fallback(bad_input, torch.device("mps"), [])
