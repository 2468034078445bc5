#!/usr/bin/env bash
# The test suite, from a fresh clone: installs what it needs (see setup.sh), then runs pytest.
# Extra arguments go to pytest, e.g.  bash launch/test.sh -k parity
# The tpu extra brings the TPU compiler (libtpu), which the pod-planning tests compile with; the
# tests themselves run on (fake) CPU devices.
cd "$(dirname "$0")/.." || exit 1
source launch/setup.sh test,tpu || exit 1
exec python -m pytest -q tests "$@"
