"""OneFormer universal segmentation with NVIDIA TAO's actions, spec keys and dataset layout; usable on its own.

Layers, each importing only from the ones above it in this list (tests/test_layers.py enforces it):

    errors, spec, presets, artifacts    error types, the pydantic spec, atomic output files and status.json
    data/                               readers, label map, targets, transforms, tokenizer, staging, synthetic data
    model/                              the transformers network, self-contained checkpoints, pretrained weights
    runtime/                            one predictor over PyTorch, ONNX Runtime and TensorRT; post-processing
    evaluation/, training/, parity      metrics and scoring, the Lightning loop, conversion parity
    actions/                            train, evaluate, inference, export, quantize, gen_trt_engine
    cli, check, templates               `oneformer <action> -e SPEC k=v` and its helpers

Nothing here imports Prefect, MLflow or Optuna: the orchestration in tasks/ and flows/ builds on this package.
"""
