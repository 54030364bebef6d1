#!/usr/bin/env bash
# Runs the test suite on all cores: ./scripts/test.sh [pytest args]
source "$(dirname "$0")/venv.sh" test
exec python -m pytest -n "$(nproc)" --dist loadfile "$@"
