#!/usr/bin/env bash
# A run on every worker of a Cloud TPU VM pod slice (v4, v5e, v5p, ...): clones or updates the
# repository on each worker, installs it with the TPU build of jax (setup.sh tpu), and starts the
# same command everywhere; jax.distributed finds the other workers by itself.
#   TPU_NAME=my-v5e-64 ZONE=us-west4-a REPO_URL=https://github.com/you/rlaif_jax.git \
#     bash launch/tpu_pod.sh --config=configs/tldr_summarization.py --workdir=gs://bucket/run1
# Needs the gcloud CLI, authenticated, on the machine you run this from. The workdir must be shared
# by all workers (a gs:// bucket or a mounted filesystem) for checkpoints to resume.
# Preemption and maintenance: a spot/preemptible TPU VM gets SIGTERM (about 30 s of notice) on the
# workers being taken; a maintenance event can be turned into the same signal with the VM's
# shutdown script or by watching the metadata server's maintenance-event key. Whichever worker
# receives it, every process learns at the next step (an all-gather of the flag), all save that same
# step and exit 143; run this script again to resume from the bucket.
set -eu
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${REPO_URL:?set REPO_URL (git URL of this repo)}"
DIR="${REPO_DIR:-rlaif_jax}"
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  if [ -d $DIR/.git ]; then git -C $DIR pull -q; else git clone -q $REPO_URL $DIR; fi
  cd $DIR && source launch/setup.sh tpu,gcs && python -m rlaif_jax.main $ARGS"
