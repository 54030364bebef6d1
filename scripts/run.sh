#!/usr/bin/env bash
# Trains the CPU demo on the built-in synthetic seedlings: ./scripts/run.sh [trainer flags]
source "$(dirname "$0")/venv.sh" cpu
exec python -m trainer.main "$@"
