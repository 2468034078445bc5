#!/usr/bin/env bash
# The RLAIF demo on the embedded default model (SmolLM2-135M-Instruct), from a fresh clone, for a
# principle with a programmatic check: the judge validated against the check on held-out pairs,
# GRPO on the judge's pointwise yes/no score of each response (d-RLAIF; the check only monitored),
# then the policy's checked effect on 8 sampled answers per held-out prompt and the judge's win
# rate, export. About 16 minutes on 2 CPU cores; stop it any time and run it again to resume.
# Extra arguments go to rlaif_jax.main, e.g.  bash launch/demo.sh --config.rl.iterations=40
cd "$(dirname "$0")/.." || exit 1
source launch/setup.sh || exit 1
# Sized for a CPU (and quiet where the tests' TPU compiler is installed without a TPU);
# JAX_PLATFORMS= bash launch/demo.sh  lets JAX pick an accelerator.
export JAX_PLATFORMS="${JAX_PLATFORMS-cpu}"
exec python -m rlaif_jax.main --config=configs/smollm2_demo.py:rlaif --workdir="${WORKDIR:-workdir/rlaif}" "$@"
