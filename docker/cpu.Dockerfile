# The pipeline for CPU workers (Prefect docker or kubernetes work pools). Build from the repository root:
#   docker build -f docker/cpu.Dockerfile -t oneformer-pipeline:cpu .
# torch comes from PyTorch's CPU index (the default index's Linux wheel pulls GBs of CUDA libraries);
# constraints.txt holds the pins the project needs (torch, fastapi, sqlalchemy, botocore).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ONEFORMER_CACHE=/results/.cache PREFECT_LOGGING_EXTRA_LOGGERS=oneformer HF_HUB_OFFLINE=1
WORKDIR /opt/oneformer

# dependencies first, in their own layer: a code change does not reinstall torch
COPY pyproject.toml constraints.txt README.md ./
RUN mkdir -p oneformer tasks flows && touch oneformer/__init__.py tasks/__init__.py flows/__init__.py \
 && pip install --extra-index-url "$TORCH_INDEX" -c constraints.txt -e '.[cluster]' \
 && rm -rf oneformer tasks flows

COPY oneformer ./oneformer
COPY tasks ./tasks
COPY flows ./flows
COPY specs ./specs
RUN pip install --no-deps -e . && oneformer default_specs --action train -o /tmp/specs-check >/dev/null

# Prefect's workers run `prefect flow-run execute` here (prefect.yaml sets this working directory).
CMD ["prefect", "version"]
