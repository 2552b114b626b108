#!/usr/bin/env bash
# Teacher pretraining on one host with several GPUs (one process sees all local GPUs).
#
#   launch/gpu_host.sh WORKDIR [--config.a=b ...]
#
# Settings (environment): CONFIG (default configs/teacher.py:gpu8, the paper's batch on 8 GPUs
# with the mesh and remat policy of the README's memory plan), MESH (default: the config's; e.g.
# "2,4,1" for 2-way data x 4-way FSDP), DATASET_DIR (a prepared dataset).
# Install once with: pip install -e . && pip install -U "jax[cuda12]>=0.10"
set -euo pipefail
WORKDIR=${1:?usage: launch/gpu_host.sh WORKDIR [overrides]}
shift
CONFIG=${CONFIG:-configs/teacher.py:gpu8}
ARGS=("--config=$CONFIG" "--workdir=$WORKDIR")
if [[ -n "${MESH:-}" ]]; then ARGS+=("--config.mesh.shape=($MESH)"); fi
if [[ -n "${DATASET_DIR:-}" ]]; then ARGS+=("--config.data.dataset_dir=$DATASET_DIR"); fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
exec python -m mobilebert_jax.main "${ARGS[@]}" "$@"
