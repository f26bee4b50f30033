#!/usr/bin/env bash
# The GPU check (issue 24, point 5): one script for a machine with an NVIDIA GPU, planned to finish in under
# 8 minutes on one H100. It installs CUDA torch, TensorRT 10 and this project into its own virtual environment,
# then benchmarks/gpu_check.py runs, through the product's own code: 50 CUDA training steps of the Swin-T OneFormer
# (the swin_tiny preset on synthetic data, bf16-mixed), the FP32 ONNX export and the INT8 QDQ model, TensorRT
# fp16 and INT8 engines built by the gen_trt_engine action, and the batch-1 latency (median ms, images/s) of eager
# CUDA PyTorch, TensorRT fp16 and TensorRT INT8, each with its parity against eager (label agreement, max abs diff).
#
# Run, from anywhere (it works in the repository it lives in):
#     bash benchmarks/gpu_check.sh                     # on the GPU machine; options go to the driver, e.g.
#     bash benchmarks/gpu_check.sh --trt-opt-level 2   # faster engine builds;  --plan: the phase plan, no GPU
# On this workplace's lent device machine: the device tool's `run` with `bash benchmarks/gpu_check.sh` and a
# timeout of 600 s (the whole check is planned at 8 minutes; every phase is skipped, not started, when it cannot
# finish in what is left).
#
# Prints: progress lines on stderr; on stdout one JSON document (GPU name, driver, CUDA / cuDNN / TensorRT / torch
# versions, wall seconds per phase and install, training steps/s, export and quantize parity, engine build seconds,
# latency median_ms / images_per_s / speedup_vs_eager / parity_vs_eager), also written to $OUT/gpu_check.json when
# OUT is set, else to benchmarks/results/gpu_check.json.
# Exit status: 0 every phase ok; 2 no GPU, or nothing to install from (said in one line, within seconds, before
# anything is installed); 3 the JSON was written but some phase failed or was skipped (its "phases" say why).
#
# Settings (environment):
#   GPU_CHECK_VENV        the check's own venv (default ~/.cache/oneformer-gpu-check/venv, outside the repository:
#                         an untracked venv in it would travel with the working tree; the CPU .venv is never touched)
#   GPU_CHECK_PYTHON      the interpreter that makes it (default python3)
#   TORCH_INDEX_URL       where torch comes from: a PyTorch CUDA wheel index (e.g. .../whl/cu128 on PyTorch's own
#                         download host); empty: pip's own index, whose Linux x86-64 torch wheels are CUDA builds. The version is
#                         constraints.txt's pin (torch==2.13.0); a CPU-only wheel is refused.
#   TENSORRT_PACKAGE      default "tensorrt-cu<torch's CUDA major>>=10,<11" (TensorRT 11 has no fp16 builder flag)
#   GPU_CHECK_OFFLINE     auto (default): probe the package index; 1: no registry, use GPU_CHECK_PYTHON's own
#                         packages (its CUDA torch) plus the wheels in GPU_CHECK_WHEELHOUSE; 0: never probe
#   GPU_CHECK_WHEELHOUSE  wheels for the offline case (default .whl). A machine that reaches no registry, like the
#                         lent device machine, has CUDA torch, onnx, onnxruntime and Lightning already but lacks
#                         pydantic (+pydantic-core, annotated-types, typing-inspection), pycocotools and a recent
#                         transformers: fetch those here with `pip download --no-deps --only-binary=:all:
#                         --python-version 3.12 --platform manylinux_2_28_x86_64 ... -d .whl NAME==VERSION` and
#                         carry .whl. TensorRT's wheels (over 1 GB) cannot travel that way: there, the TensorRT
#                         phases are skipped and say so, and the rest still runs.
set -euo pipefail

die() { echo "gpu_check: $*" >&2; exit 2; }
note() { echo "gpu_check: $*" >&2; }
now() { date +%s.%N; }

started=$(now)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
base=${GPU_CHECK_PYTHON:-python3}

for arg in "$@"; do  # the plan and the help need no GPU and install nothing
  case $arg in
    --plan|-h|--help) exec "$base" benchmarks/gpu_check.py "$@" ;;
  esac
done

# 1. The GPU, first and in seconds: nothing is installed on a machine without one.
command -v nvidia-smi >/dev/null 2>&1 \
  || die "no GPU: nvidia-smi is not on PATH (no NVIDIA driver here); run this on a machine with an NVIDIA GPU (on this workplace: the lent device machine, bash benchmarks/gpu_check.sh)"
if ! gpus=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1); then
  die "no GPU: nvidia-smi failed: $(head -n1 <<<"$gpus"); check the NVIDIA driver and that a GPU is visible (CUDA_VISIBLE_DEVICES)"
fi
[[ -n ${gpus//[[:space:]]/} ]] \
  || die "no GPU: nvidia-smi lists no device; check the NVIDIA driver and CUDA_VISIBLE_DEVICES"
note "GPU: $(head -n1 <<<"$gpus")"
command -v "$base" >/dev/null 2>&1 || die "no Python: $base is not on PATH; set GPU_CHECK_PYTHON"

# 2. Where packages come from: the package index, or (none reachable) the interpreter's own plus a wheelhouse.
venv=${GPU_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/oneformer-gpu-check/venv}
wheelhouse=${GPU_CHECK_WHEELHOUSE:-$repo/.whl}
offline=${GPU_CHECK_OFFLINE:-auto}
if [[ $offline == auto ]]; then
  offline=0
  probe=(-m pip index versions torch --timeout 5 --retries 0 --disable-pip-version-check)
  [[ -n ${TORCH_INDEX_URL:-} ]] && probe+=(--index-url "$TORCH_INDEX_URL")
  timeout 40 "$base" "${probe[@]}" >/dev/null 2>&1 || offline=1
  [[ $offline == 1 ]] && note "no package index answers: offline install (this interpreter's packages + $wheelhouse)"
fi

torch_pin=$(sed -n 's/^torch==\([^ #]*\).*/\1/p' constraints.txt | head -n1)
[[ -n $torch_pin ]] || die "constraints.txt pins no torch==VERSION"

if [[ $offline == 1 ]]; then
  # No registry: the interpreter must bring CUDA torch itself; extra wheels go to a folder on PYTHONPATH.
  "$base" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' >/dev/null 2>&1 \
    || die "no package index answers and $base has no CUDA torch: run where pip reaches a package index, or set GPU_CHECK_PYTHON to a Python with CUDA torch"
  site=$venv/offline-site
  mkdir -p "$site"
  shopt -s nullglob
  wheels=("$wheelhouse"/*.whl)
  shopt -u nullglob
  if ((${#wheels[@]})); then
    note "installing ${#wheels[@]} wheels from $wheelhouse into $site"
    "$base" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "${wheels[@]}"
  else
    note "no wheels in $wheelhouse: the driver lists what is missing, if anything"
  fi
  export PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
  py=$base
else
  [[ -x $venv/bin/python ]] || { mkdir -p "$(dirname "$venv")" && "$base" -m venv "$venv"; }
  py=$venv/bin/python
  index=()
  [[ -n ${TORCH_INDEX_URL:-} ]] && index=(--index-url "$TORCH_INDEX_URL")
  note "installing torch==$torch_pin${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL} into $venv"
  "$py" -m pip install -q --disable-pip-version-check "torch==$torch_pin" "${index[@]}"
  cuda=$("$py" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null)
  [[ -n $cuda ]] \
    || die "the torch installed in $venv is a CPU-only build ($("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null)); set TORCH_INDEX_URL to a PyTorch CUDA wheel index"
  trt=${TENSORRT_PACKAGE:-tensorrt-cu${cuda%%.*}>=10,<11}
  note "installing $trt (CUDA $cuda)"
  "$py" -m pip install -q --disable-pip-version-check "$trt" \
    || note "could not install $trt: the TensorRT phases will be skipped (the JSON says why)"
  note "installing the project (pip install -c constraints.txt -e .)"
  "$py" -m pip install -q --disable-pip-version-check -c constraints.txt -e .
fi
install_s=$(awk -v a="$started" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
note "installs done in ${install_s} s"

# 3. The check itself.
export PYTHONUNBUFFERED=1
exec "$py" benchmarks/gpu_check.py --started "$started" --install-seconds "$install_s" "$@"
