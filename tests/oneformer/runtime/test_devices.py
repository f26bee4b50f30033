"""evaluate / inference / gen_trt_engine run on the device TAO's num_gpus and gpu_ids name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oneformer.errors import OneFormerError
from oneformer.runtime.devices import cuda_device, inference_device


def test_num_gpus_0_or_no_cuda_runs_on_the_cpu() -> None:
    assert inference_device(Path("m.pth"), 0, [3], "evaluate") == "cpu"
    assert inference_device(Path("m.onnx"), 1, [0], "evaluate") is None  # ONNX Runtime: the CPU
    if not torch.cuda.is_available():
        assert inference_device(Path("m.pth"), 1, [0], "evaluate") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message for a machine without CUDA")
def test_asking_for_a_gpu_this_machine_lacks_names_the_key() -> None:
    with pytest.raises(OneFormerError, match="gen_trt_engine.gpu_id: GPU 1 was asked for, but this machine has no"):
        cuda_device(1, "gen_trt_engine.gpu_id")


@pytest.mark.gpu
def test_the_first_gpu_id_is_used_and_a_missing_one_is_refused() -> None:
    last = torch.cuda.device_count() - 1
    assert inference_device(Path("m.engine"), 1, [last, 0], "inference") == f"cuda:{last}"
    with pytest.raises(OneFormerError, match=f"inference.gpu_ids: GPU {last + 1} does not exist"):
        inference_device(Path("m.pth"), 1, [last + 1], "inference")
