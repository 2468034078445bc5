#!/usr/bin/env bash
# The demo pipeline on the embedded default model (SmolLM2-135M-Instruct), from a fresh clone.
# Extra arguments go to rlaif_jax.main, e.g.  bash launch/demo.sh --config.generate.max_new_tokens=32
cd "$(dirname "$0")/.." || exit 1
source launch/setup.sh || exit 1
exec python -m rlaif_jax.main --config=configs/smollm2_demo.py --workdir="${WORKDIR:-workdir/demo}" "$@"
