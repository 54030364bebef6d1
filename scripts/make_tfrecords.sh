#!/usr/bin/env bash
# Converts a folder of plant-seedling class folders into sharded TFRecords:
#   scripts/make_tfrecords.sh IN OUT [--num_shards=16 --max_image_side=512 --overwrite ...]
# Runs with the Python that `python -m` would use: $PYTHON if set, else the
# activated virtualenv's, else the repository's .venv, else python3 on PATH.
# See `python -m input_pipeline.make_tfrecords --help` for the flags; a TFDS data set
# converts with that command and --tfds_name in place of --input_dir.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 INPUT_DIR OUTPUT_DIR [make_tfrecords flags]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    PYTHON="$VIRTUAL_ENV/bin/python"
  elif [ -x "$ROOT/.venv/bin/python" ]; then
    PYTHON="$ROOT/.venv/bin/python"
  else
    PYTHON=python3
  fi
fi
INPUT_DIR="$1"
OUTPUT_DIR="$2"
shift 2
# PYTHONPATH instead of cd, so relative IN and OUT keep meaning the caller's
# folders, and the package is found without being pip-installed.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m input_pipeline.make_tfrecords \
  --input_dir="$INPUT_DIR" --output_dir="$OUTPUT_DIR" "$@"
