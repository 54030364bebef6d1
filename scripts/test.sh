#!/usr/bin/env bash
# Runs the test suite on all cores: ./scripts/test.sh [pytest args]
source "$(dirname "$0")/venv.sh" test
# One worker more than cores: many tests wait on trainer processes, sockets or
# signals part of the time, and the extra worker keeps the cores busy then.
exec python -m pytest -n "$(( $(nproc) + 1 ))" --dist loadfile "$@"
