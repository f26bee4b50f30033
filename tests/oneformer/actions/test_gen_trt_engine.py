"""TensorRT: the spec-to-builder settings on CPU, the clear error without TensorRT, a real build on a GPU."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from oneformer.actions.gen_trt_engine import builder_flags, engine_name, gen_trt_engine, settings, symmetric_qdq
from oneformer.errors import CheckpointError, ConversionError, SpecError
from oneformer.runtime.predictor import META_KEY, ModelInfo
from oneformer.spec import build_spec

INFO = ModelInfo(task="semantic", output="scores", input_size=[64, 64],
                 label_map=[{"id": 1, "name": "a", "isthing": False}])


def tiny_onnx(path: Path, batch: int | str = "batch", qdq: bool = False) -> Path:
    """A one-node graph shaped like an export: pixel_values [B,3,64,64] in, scores out, our metadata."""
    nodes, inits = [helper.make_node("Identity", ["pixel_values"], ["scores"])], []
    if qdq:
        inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                 numpy_helper.from_array(np.array(0, np.uint8), "z")]
        nodes = [helper.make_node("QuantizeLinear", ["pixel_values", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["scores"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                                                         [batch, 3, 64, 64])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key=META_KEY, value=INFO.to_json())
    onnx.save(model, str(path))
    return path


def spec_for(tmp_path: Path, **trt: object):  # noqa: ANN201
    return build_spec({"results_dir": str(tmp_path / "results"), "gen_trt_engine": {
        "onnx_file": str(tmp_path / "model.onnx"), "tensorrt": trt}})


def test_dynamic_batch_profile_workspace_and_names(tmp_path: Path) -> None:
    tiny_onnx(tmp_path / "model.onnx")
    s = settings(spec_for(tmp_path, data_type="fp16", min_batch_size=1, opt_batch_size=4, max_batch_size=8,
                          workspace_size=2048, timing_cache=str(tmp_path / "cache.bin")))
    assert (s.min_shape, s.opt_shape, s.max_shape) == ((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))
    assert s.workspace_bytes == 2048 * 2**20 and s.input_name == "pixel_values" and s.precision == "fp16"
    assert s.engine_file == tmp_path / "results" / "gen_trt_engine" / "model.fp16.engine"
    assert s.timing_cache == tmp_path / "cache.bin" and s.info.precision == "fp16" and s.info.task == "semantic"


def test_fixed_batch_wins_and_bad_profile_is_named(tmp_path: Path) -> None:
    tiny_onnx(tmp_path / "model.onnx", batch=2)
    s = settings(spec_for(tmp_path, data_type="fp32", max_batch_size=8))
    assert s.min_shape[0] == s.opt_shape[0] == s.max_shape[0] == 2
    tiny_onnx(tmp_path / "model.onnx")
    with pytest.raises(SpecError, match=r"min_batch_size \(4\) <= opt_batch_size \(2\)"):
        settings(spec_for(tmp_path, min_batch_size=4, opt_batch_size=2, max_batch_size=8))


def test_taos_gen_trt_engine_keys_are_honoured_or_noted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tiny_onnx(tmp_path / "model.onnx")
    spec = build_spec({"results_dir": str(tmp_path / "results"), "gen_trt_engine": {
        "onnx_file": str(tmp_path / "model.onnx"), "batch_size": 4, "input_channel": 3, "input_height": 64,
        "input_width": 64, "opset_version": 12, "verbose": True,
        "tensorrt": {"max_batch_size": 8, "calibration": {"cal_image_dir": ["/data/cal"], "cal_batches": 10}}}})
    with caplog.at_level("INFO"):
        s = settings(spec)
    assert s.min_shape == s.opt_shape == s.max_shape == (4, 3, 64, 64) and s.verbose  # batch_size: one batch
    assert "opset_version 12 has no effect" in caplog.text and "tensorrt.calibration has no effect" in caplog.text
    spec.gen_trt_engine.input_width = 128
    with pytest.raises(ConversionError, match=r"gen_trt_engine.input_width=128, but .*model.onnx takes 64: .*"
                                              r"oneformer export export.input_width=128"):
        settings(spec)


def test_int8_needs_a_qdq_model(tmp_path: Path) -> None:
    tiny_onnx(tmp_path / "model.onnx")
    with pytest.raises(ConversionError, match="int8 needs an INT8 QDQ model.*oneformer quantize"):
        settings(spec_for(tmp_path, data_type="int8"))
    tiny_onnx(tmp_path / "model.onnx", qdq=True)
    assert settings(spec_for(tmp_path, data_type="int8")).engine_file.name == "model.int8.engine"
    assert engine_name(Path("x/model.int8.onnx"), "int8") == "model.int8.engine"


def test_asymmetric_uint8_qdq_becomes_symmetric_int8_over_the_same_range(tmp_path: Path) -> None:
    import onnxruntime as ort

    path = tiny_onnx(tmp_path / "model.onnx", qdq=True)
    model = onnx.load(str(path))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array(100, np.uint8), "z"))  # range [-10, 15.5]
    model.graph.node.append(helper.make_node("Shape", ["q"], ["shape"]))  # quantize's shortcut: Shape reads q
    model.graph.output.append(helper.make_tensor_value_info("shape", TensorProto.INT64, None))
    assert symmetric_qdq(model) == 1
    scales = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q, dq, shape = model.graph.node
    assert list(q.input[1:]) == list(dq.input[1:]) == ["s_trt", "z_trt_zp"] and shape.input[0] == "scores"
    assert scales["z_trt_zp"].dtype == np.int8 and scales["z_trt_zp"] == 0
    assert np.isclose(scales["s_trt"], 0.1 * 155 / 127)  # max(100 - 0, 255 - 100) steps of 0.1, over 127
    assert symmetric_qdq(model) == 0  # symmetric int8 already: untouched
    x = np.linspace(-9, 15, 3 * 64 * 64, dtype=np.float32).reshape(1, 3, 64, 64)
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {
        "pixel_values": x})
    assert np.abs(out[0] - x).max() <= scales["s_trt"] / 2 + 1e-6 and list(out[1]) == [1, 3, 64, 64]


def test_int32_bias_dequantize_becomes_its_float_constant() -> None:
    inits = [numpy_helper.from_array(np.array([3, -4], np.int32), "b_q"),
             numpy_helper.from_array(np.array([0.5, 0.25], np.float32), "b_s"),
             numpy_helper.from_array(np.array([0, 0], np.int32), "b_z")]
    nodes = [helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], axis=0),
             helper.make_node("Add", ["x", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert symmetric_qdq(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Add"]
    assert {t.name: numpy_helper.to_array(t).tolist() for t in model.graph.initializer} == {"b": [1.5, -1.0]}


def test_builder_flags_follow_the_tensorrt_version() -> None:
    trt10 = SimpleNamespace(__version__="10.16.1", BuilderFlag=SimpleNamespace(FP16="fp16", INT8="int8"))
    trt11 = SimpleNamespace(__version__="11.4.0", BuilderFlag=SimpleNamespace(TF32="tf32"))
    assert builder_flags(trt10, "fp16") == ["fp16"] and builder_flags(trt10, "int8") == ["int8", "fp16"]
    assert builder_flags(trt10, "fp32") == [] == builder_flags(trt11, "int8") == builder_flags(trt11, "fp32")
    with pytest.raises(ConversionError, match=r"TensorRT 11.4.0 builds only strongly typed networks.*tensorrt-cu12"):
        builder_flags(trt11, "fp16")


def test_missing_onnx_and_existing_engine(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="gen_trt_engine.onnx_file: .*model.onnx does not exist"):
        settings(spec_for(tmp_path))
    tiny_onnx(tmp_path / "model.onnx")
    engine = tmp_path / "results" / "gen_trt_engine" / "model.fp16.engine"
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"old")
    with pytest.raises(Exception, match="already exists.*gen_trt_engine.overwrite=true"):
        settings(spec_for(tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without TensorRT/CUDA")
def test_missing_tensorrt_is_a_clear_error(tmp_path: Path) -> None:
    tiny_onnx(tmp_path / "model.onnx")
    with pytest.raises(ConversionError, match="TensorRT is not installed|no CUDA device"):
        gen_trt_engine(spec_for(tmp_path))
    assert not list((tmp_path / "results").rglob("*.engine"))
    status = (tmp_path / "results" / "gen_trt_engine" / "status.json").read_text().splitlines()
    assert json.loads(status[-1])["status"] == "FAILURE" and json.loads(status[-1])["verbosity"] == "ERROR"


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_builds_and_matches_onnxruntime(trained: dict, tmp_path: Path, precision: str) -> None:
    pytest.importorskip("tensorrt")
    from oneformer.actions.evaluate import evaluate
    from oneformer.actions.export import export
    from oneformer.actions.quantize import quantize
    from oneformer.spec import load_spec

    base = [f"results_dir={tmp_path}", f"train.results_dir={trained['results']}/train"]
    onnx_file = tmp_path / "model.onnx"
    export(load_spec(trained["spec_path"], [*base, f"export.onnx_file={onnx_file}"]))
    if precision == "int8":
        quantize(load_spec(trained["spec_path"], [*base, f"quantize.model_path={onnx_file}"]))
        onnx_file = tmp_path / "quantize" / "model.int8.onnx"
    report = gen_trt_engine(load_spec(trained["spec_path"], [*base, f"gen_trt_engine.onnx_file={onnx_file}",
                                                             f"gen_trt_engine.tensorrt.data_type={precision}",
                                                             "gen_trt_engine.tensorrt.max_batch_size=4"]))
    assert report["agreement"] >= (0.99 if precision != "int8" else 0.95)
    metrics = evaluate(load_spec(trained["spec_path"], [*base, f"evaluate.checkpoint={report['engine_file']}"]))
    assert metrics["mIoU"] >= 0.5
