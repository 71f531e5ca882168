#!/usr/bin/env bash
# The example against the component as an adopter gets it: build the component's wheel,
# install it (with its [redis] extra) and requirements.txt into a fresh virtual
# environment that holds nothing else of this repository, and run the example's tests
# there. `make example-test` runs this; extra arguments go to pytest. REDIS_URL, if set,
# is passed on (the example then uses channels-redis).
set -euo pipefail
started=$SECONDS
example=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$example/../.." && pwd)
# The interpreter .venv was made from (the .python-version one), not .venv itself.
python=$("$root/.venv/bin/python" -c 'import sys; print(sys._base_executable)')
tmp=$(mktemp -d "${TMPDIR:-/tmp}/example-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Build from a copy of the sources: an in-tree build leaves streaming/build/ behind, and
# a stale build/ could put deleted modules into the wheel.
mkdir "$tmp/src"
tar -C "$root" --exclude=build --exclude='*.egg-info' --exclude=__pycache__ -cf - streaming |
  tar -C "$tmp/src" -xf -
if ! "$root/.venv/bin/python" -m build --wheel --outdir "$tmp/dist" "$tmp/src/streaming" \
  >"$tmp/build.log" 2>&1; then
  cat "$tmp/build.log" >&2
  exit 1
fi
wheel=$(echo "$tmp"/dist/*.whl)
echo "example-test: built $(basename "$wheel") ($((SECONDS - started)) s)"

"$python" -m venv "$tmp/venv"
# --no-compile: byte-compiling every installed module (Django's thousands) is a third of
# the install; the few the test imports compile on import.
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile \
  "$wheel[redis]" -r "$example/requirements.txt"

echo "example-test: installed it into a fresh venv ($((SECONDS - started)) s)"

cd "$example"
env -u PYTHONPATH EXAMPLE_FROM_WHEEL=1 "$tmp/venv/bin/python" -m pytest "$@"
echo "example-test: passed in $((SECONDS - started)) s"
