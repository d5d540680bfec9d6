#!/usr/bin/env bash
# Runs the whole test suite. pytest exits 5 when it collected no test: that is a failure here,
# since a suite that runs nothing proves nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
    echo "run-tests: pytest collected no tests" >&2
fi
exit $rc
