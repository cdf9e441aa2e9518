#!/bin/sh
# Runs the independent Python client test of `cvmm manager`: installs the pinned packages with
# pip, then pytest. Env: CVMM_BIN (default: x86_64-unknown-linux-gnu/debug/cvmm under
# $CARGO_TARGET_DIR or target/, built with `cargo build` when missing), PYTHON (default python3).
# Extra arguments go to pytest.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=${PYTHON:-python3}
"$py" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
bin=${CVMM_BIN:-${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-gnu/debug/cvmm}
if [ ! -x "$bin" ] && [ -z "${CVMM_BIN:-}" ]; then
  (cd "$root" && cargo build --quiet --bin cvmm)
fi
export CVMM_BIN="$bin"
cd "$root"
export PYTHONDONTWRITEBYTECODE=1
exec "$py" -m pytest -q -p no:cacheprovider "$here" "$@"
