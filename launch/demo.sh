#!/usr/bin/env bash
# The RLAIF demo on the embedded default model (SmolLM2-135M-Instruct), from a fresh clone: label
# response pairs with the debiased judge, train the reward model, PPO, win rate on held-out prompts,
# export. About 15 minutes on 2 CPU cores; stop it any time and run it again to resume.
# Extra arguments go to rlaif_jax.main, e.g.  bash launch/demo.sh --config.rl.iterations=40
cd "$(dirname "$0")/.." || exit 1
source launch/setup.sh || exit 1
# Sized for a CPU (and quiet where the tests' TPU compiler is installed without a TPU);
# JAX_PLATFORMS= bash launch/demo.sh  lets JAX pick an accelerator.
export JAX_PLATFORMS="${JAX_PLATFORMS-cpu}"
exec python -m rlaif_jax.main --config=configs/smollm2_demo.py:rlaif --workdir="${WORKDIR:-workdir/rlaif}" "$@"
