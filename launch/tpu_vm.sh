#!/usr/bin/env bash
# Cloud TPU VM lifecycle for teacher pretraining: create, install, run on all workers, logs, delete.
#
#   launch/tpu_vm.sh create             # a TPU VM (multi-host for pods)
#   launch/tpu_vm.sh install            # this repo + its dependencies on every worker
#   launch/tpu_vm.sh prepare            # the pretraining dataset on every worker's disk
#   launch/tpu_vm.sh run                # configs/teacher.py on all workers, workdir on GCS
#   launch/tpu_vm.sh logs               # stream worker 0's log
#   launch/tpu_vm.sh stop | delete      # stop the run / delete the VM
#
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR (e.g. v4-32, v5p-256, v3-256),
# RUNTIME (TPU software version), PROJECT, BUCKET (gs://...), CONFIG, EXTRA_ARGS,
# REPO_URL (where the workers clone this repository from) and REPO_REF.
set -euo pipefail

TPU_NAME=${TPU_NAME:-mobilebert-teacher}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
BUCKET=${BUCKET:?set BUCKET=gs://your-bucket}
CONFIG=${CONFIG:-configs/teacher.py}
REPO_URL=${REPO_URL:?set REPO_URL to a git URL of this repository}
REPO_REF=${REPO_REF:-main}
RUN_NAME=${RUN_NAME:-teacher}
WORKDIR=${WORKDIR:-$BUCKET/runs/$RUN_NAME}
# Preparation is deterministic (same seed, same bytes), so each worker prepares its own copy.
DATASET_DIR=${DATASET_DIR:-/home/\$USER/data/wikipedia_seq128}
EXTRA_ARGS=${EXTRA_ARGS:-}

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
    --worker=all --command="$1"
}
ssh_0() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
    --worker=0 --command="$1"
}

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
    ;;
  install)
    ssh_all "set -e; sudo apt-get -qq update && sudo apt-get -qq install -y python3.11 python3.11-venv git;
      python3.11 -m venv ~/venv && source ~/venv/bin/activate;
      rm -rf ~/mobilebert_jax && git clone -q $REPO_URL ~/mobilebert_jax && cd ~/mobilebert_jax && git checkout -q $REPO_REF;
      pip install -q -U pip && pip install -q -e . && pip install -q -U 'jax[tpu]>=0.10'"
    ;;
  prepare)
    ssh_all "source ~/venv/bin/activate && cd ~/mobilebert_jax &&
      python -m mobilebert_jax.data.prepare --corpus=tfds:wikipedia/20230601.en \
        --tokenizer=bert-base-uncased --seq_len=128 --out=$DATASET_DIR"
    ;;
  run)
    # Every worker runs the same command; jax.distributed.initialize() discovers the pod.
    ssh_all "source ~/venv/bin/activate && cd ~/mobilebert_jax &&
      nohup python -m mobilebert_jax.main --config=$CONFIG --workdir=$WORKDIR \
        --config.data.dataset_dir=$DATASET_DIR $EXTRA_ARGS > ~/run.log 2>&1 &"
    ;;
  logs)
    ssh_0 "tail -f ~/run.log"
    ;;
  stop)
    # SIGTERM: every worker saves a checkpoint at the current step and exits.
    ssh_all "pkill -TERM -f mobilebert_jax.main || true"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --quiet
    ;;
  *)
    sed -n '2,14p' "$0"; exit 1
    ;;
esac
