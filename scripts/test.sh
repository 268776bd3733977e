#!/usr/bin/env bash
# Installs the pinned requirements with the test extras (requirements-test.txt: requirements.txt,
# pytest, and the weight-import and notebook stacks the tests exercise) into .venv (created if
# missing) and runs the test suite,
# with tcmalloc preloaded when it is installed (what mnv3_jax.runtime.use_tcmalloc does for
# main.py: XLA CPU runs about 2x faster with it). Two pytest workers, one test file each at a
# time: most of the suite's time is XLA compilation, which is single-threaded.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements-test.txt
tcmalloc=$(.venv/bin/python -c 'from mnv3_jax import runtime; print(runtime.find_tcmalloc() or "")')
# One XLA compilation cache for both workers and the processes tests start (tests/conftest.py).
cache=$(mktemp -d -t mnv3_jax_xla_cache.XXXXXX)
trap 'rm -rf "$cache"' EXIT
env ${tcmalloc:+LD_PRELOAD="$tcmalloc"} MNV3_TEST_XLA_CACHE="$cache" \
  .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
