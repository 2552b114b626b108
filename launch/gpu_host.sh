#!/usr/bin/env bash
# Teacher pretraining on one host with several GPUs (one process sees all local GPUs).
#
#   launch/gpu_host.sh WORKDIR [--config.a=b ...]
#
# Settings (environment): CONFIG (default configs/teacher.py), MESH (default "-1,1,1": data
# parallel over all GPUs; e.g. "2,4,1" adds 4-way FSDP), DATASET_DIR (a prepared dataset).
# Install once with: pip install -e . && pip install -U "jax[cuda12]>=0.10"
set -euo pipefail
WORKDIR=${1:?usage: launch/gpu_host.sh WORKDIR [overrides]}
shift
CONFIG=${CONFIG:-configs/teacher.py}
MESH=${MESH:--1,1,1}
ARGS=("--config=$CONFIG" "--workdir=$WORKDIR" "--config.mesh.shape=($MESH)")
if [[ -n "${DATASET_DIR:-}" ]]; then ARGS+=("--config.data.dataset_dir=$DATASET_DIR"); fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
exec python -m mobilebert_jax.main "${ARGS[@]}" "$@"
