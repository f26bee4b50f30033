# The pipeline for NVIDIA GPU workers, TensorRT included, on NVIDIA's TensorRT image (CUDA, cuDNN, TensorRT 10
# and its Python bindings). Build from the repository root:
#   docker build -f docker/cuda.Dockerfile -t oneformer-pipeline:cuda .
# Run with the NVIDIA container toolkit (docker run --gpus all ...; on Kubernetes, nvidia.com/gpu limits).
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3
FROM ${TENSORRT_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ONEFORMER_CACHE=/results/.cache PREFECT_LOGGING_EXTRA_LOGGERS=oneformer HF_HUB_OFFLINE=1
WORKDIR /opt/oneformer

COPY pyproject.toml constraints.txt README.md ./
RUN mkdir -p oneformer tasks flows && touch oneformer/__init__.py tasks/__init__.py flows/__init__.py \
 && python3 -m pip install --extra-index-url "$TORCH_INDEX" -c constraints.txt -e '.[cluster]' \
 && rm -rf oneformer tasks flows \
 && python3 -c "import tensorrt; print('TensorRT', tensorrt.__version__)"

COPY oneformer ./oneformer
COPY tasks ./tasks
COPY flows ./flows
COPY specs ./specs
RUN python3 -m pip install --no-deps -e .

CMD ["prefect", "version"]
