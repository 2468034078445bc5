#!/usr/bin/env bash
# A run on this machine: installs what it needs (setup.sh), then starts rlaif_jax.main with the
# arguments given. NPROC=N starts N processes joined by jax.distributed on localhost (one per GPU on
# a multi-GPU node, or to try multi-host code on CPU); the default is one process.
#   bash launch/local.sh --config=configs/smollm2_demo.py:rlaif --workdir=workdir/rlaif
#   NPROC=2 bash launch/local.sh --config=configs/tiny.py --workdir=/tmp/tiny --config.model.source=DIR
cd "$(dirname "$0")/.." || exit 1
source launch/setup.sh "${EXTRAS:-}" || exit 1
NPROC="${NPROC:-1}"
if [ "$NPROC" -le 1 ]; then
  exec python -m rlaif_jax.main "$@"
fi
PORT="${PORT:-$((20000 + RANDOM % 20000))}"
pids=()
for ((i = 0; i < NPROC; i++)); do
  JAX_COORDINATOR_ADDRESS="localhost:${PORT}" JAX_NUM_PROCESSES="$NPROC" JAX_PROCESS_ID="$i" \
    python -m rlaif_jax.main "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT  # SIGTERM reaches every process: each saves
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
