#!/usr/bin/env bash
# Cloud TPU VM lifecycle for teacher pretraining, everything in one bucket:
#
#   launch/tpu_vm.sh check     # compile $CONFIG for $ACCELERATOR here (libtpu, no TPU): fits?
#   launch/tpu_vm.sh create    # check, then request the TPU VM through a queued resource
#   launch/tpu_vm.sh wait      # until the queued resource is ACTIVE
#   launch/tpu_vm.sh install   # this repo + its dependencies on every worker
#   launch/tpu_vm.sh prepare   # the pretraining dataset, once, into $BUCKET (worker 0 only)
#   launch/tpu_vm.sh run       # configs/teacher.py on all workers: one workdir, one dataset
#   launch/tpu_vm.sh logs      # stream worker 0's log
#   launch/tpu_vm.sh stop      # SIGTERM: every worker saves the same step and exits
#   launch/tpu_vm.sh delete    # delete the queued resource and its TPU VM
#
# Settings (environment): BUCKET (gs://..., required: holds the dataset, the workdir with its
# checkpoints, metrics.jsonl and TensorBoard events), TPU_NAME, ZONE, ACCELERATOR (v4-32, v4-64,
# v5p-256, v3-256, ...), RUNTIME (TPU software version), PROJECT, PROVISIONING (spot | reserved |
# on-demand), CONFIG (default: the compiled variant for ACCELERATOR), CORPUS, DATASET_DIR,
# RUN_NAME, EXTRA_ARGS, REPO_URL and REPO_REF; PYTHON (check: an environment with this repo and
# `pip install -e .[tpu]`; default python3) and SKIP_CHECK=1 (create without the check).
# A spot VM that is preempted is recreated with `create` + `wait` + `install` + `run`: the run
# resumes from the newest checkpoint in $BUCKET (on any host count).
set -euo pipefail

TPU_NAME=${TPU_NAME:-mobilebert-teacher}
QUEUED_RESOURCE=${QUEUED_RESOURCE:-$TPU_NAME-qr}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}
PROVISIONING=${PROVISIONING:-spot}
PYTHON=${PYTHON:-python3}
COMMAND=${1:-}
# `check` runs here and needs no bucket or repository URL.
[[ "$COMMAND" == check ]] && BUCKET=${BUCKET:-gs://unused} REPO_URL=${REPO_URL:-unused}
BUCKET=${BUCKET:?set BUCKET=gs://your-bucket}
BUCKET=${BUCKET%/}
# The paper's batch with the mesh and remat policy that XLA:TPU compiles to fit the slice
# (docs/scaling.md, "Compiled for a TPU slice or GPUs, on a CPU"): configs/teacher.py:v4_64 on a v4-64
# or v5p-64, :v6e_64 on a v6e-64, :v5e_256 on a v5litepod-256, else the default mesh.
case "$ACCELERATOR" in
  v4-64|v5p-64) PLANNED=configs/teacher.py:v4_64;;
  v6e-64) PLANNED=configs/teacher.py:v6e_64;;
  v5litepod-256) PLANNED=configs/teacher.py:v5e_256;;
  *) PLANNED=configs/teacher.py;;
esac
CONFIG=${CONFIG:-$PLANNED}
CORPUS=${CORPUS:-tfds:wikipedia/20230601.en}
REPO_URL=${REPO_URL:?set REPO_URL to a git URL of this repository}
REPO_REF=${REPO_REF:-main}
RUN_NAME=${RUN_NAME:-teacher}
WORKDIR=${WORKDIR:-$BUCKET/runs/$RUN_NAME}
# One dataset for the whole pod, prepared once; every host reads it from the bucket.
DATASET_DIR=${DATASET_DIR:-$BUCKET/data/wikipedia_seq128}
EXTRA_ARGS=${EXTRA_ARGS:-}

case "$BUCKET" in gs://*) ;; *) echo "error: BUCKET=$BUCKET: must be a gs:// URI" >&2; exit 1;; esac

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
    --worker=all --command="$1"
}
ssh_0() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
    --worker=0 --command="$1"
}
qr() {
  gcloud compute tpus queued-resources "$@" --zone="$ZONE" --project="$PROJECT"
}

# The config's step programs compiled for $ACCELERATOR by XLA:TPU on this machine
# (mobilebert_jax.plan.compile): memory per device against HBM, a verdict; fails when one
# does not fit. Minutes for a full-size config on a CPU.
check() {
  cd "$(dirname "$0")/.."
  "$PYTHON" -m mobilebert_jax.plan.compile --config="$CONFIG" --topology="$ACCELERATOR" \
    $EXTRA_ARGS
}

case "$COMMAND" in
  check)
    check
    ;;
  create)
    if [[ "${SKIP_CHECK:-0}" != 1 ]]; then
      check || { echo "error: the check of $CONFIG on $ACCELERATOR failed (above); not" \
        "creating $TPU_NAME (SKIP_CHECK=1 creates it anyway)" >&2; exit 1; }
    fi
    case "$PROVISIONING" in
      spot) mode=(--spot);;
      reserved) mode=(--reserved);;
      on-demand) mode=();;
      *) echo "error: PROVISIONING=$PROVISIONING: expected spot, reserved or on-demand" >&2
         exit 1;;
    esac
    qr create "$QUEUED_RESOURCE" --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR" \
      --runtime-version="$RUNTIME" "${mode[@]}"
    ;;
  wait)
    while true; do
      state=$(qr describe "$QUEUED_RESOURCE" --format='value(state.state)')
      echo "$(date -u +%H:%M:%S) $QUEUED_RESOURCE: $state"
      case "$state" in
        ACTIVE) break;;
        FAILED|SUSPENDED) echo "error: queued resource $QUEUED_RESOURCE is $state" >&2; exit 1;;
      esac
      sleep 60
    done
    ;;
  install)
    ssh_all "set -e; sudo apt-get -qq update && sudo apt-get -qq install -y python3.11 python3.11-venv git;
      python3.11 -m venv ~/venv && source ~/venv/bin/activate;
      rm -rf ~/mobilebert_jax && git clone -q $REPO_URL ~/mobilebert_jax && cd ~/mobilebert_jax && git checkout -q $REPO_REF;
      pip install -q -U pip && pip install -q -c .ci/constraints.txt -e . && pip install -q -U 'jax[tpu]>=0.10'"
    ;;
  prepare)
    # Once for the whole pod, into the bucket (shards uploaded as they are written, the
    # metadata last: the trainer never takes a half-written dataset for a complete one), with
    # the settings of configs/teacher.py. The Beam pipeline runs on worker 0's cores (one local
    # worker process per core), or on Dataflow when DATAFLOW_PROJECT is set (then worker 0 only
    # submits the job; `pip install -e .[dataflow]` there first).
    BEAM_ARGS=""
    if [[ -n "${DATAFLOW_PROJECT:-}" ]]; then
      BEAM_ARGS="-- --runner=DataflowRunner --project=$DATAFLOW_PROJECT \
        --region=${DATAFLOW_REGION:-us-central1} --temp_location=$BUCKET/tmp/beam \
        --setup_file=./setup.py --max_num_workers=${DATAFLOW_WORKERS:-64}"
    fi
    ssh_0 "source ~/venv/bin/activate && cd ~/mobilebert_jax &&
      python -m mobilebert_jax.data.prepare --corpus='$CORPUS' --tokenizer=bert-base-uncased \
        --seq_len=128 --max_predictions_per_seq=20 --dupe_factor=5 --seed=0 \
        --eval_fraction=0.01 --num_workers=\$(nproc) --out=$DATASET_DIR $BEAM_ARGS"
    ;;
  run)
    # Every worker runs the same command on the same workdir and dataset;
    # jax.distributed.initialize() discovers the pod.
    ssh_all "source ~/venv/bin/activate && cd ~/mobilebert_jax &&
      nohup python -m mobilebert_jax.main --config=$CONFIG --workdir=$WORKDIR \
        --config.data.dataset_dir=$DATASET_DIR --config.data.corpus= $EXTRA_ARGS > ~/run.log 2>&1 &"
    ;;
  logs)
    ssh_0 "tail -f ~/run.log"
    ;;
  stop)
    ssh_all "pkill -TERM -f mobilebert_jax.main || true"
    ;;
  delete)
    qr delete "$QUEUED_RESOURCE" --force --quiet
    ;;
  *)
    sed -n '2,21p' "$0"; exit 1
    ;;
esac
