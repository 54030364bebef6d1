#!/usr/bin/env bash
# Trains on a Cloud TPU VM: creates it (or reuses it), copies this repository to every
# worker, installs it with the `tpu` extra, runs the trainer on all workers with
# --strategy=tpu --tpu=local, streaming its logs, and optionally deletes the VM.
#
#   launch/tpu_vm.sh --project=P --zone=Z [--name=seedlings-tpu]
#       [--accelerator_type=v5litepod-8] [--version=v2-alpha-tpuv5-lite]
#       [--delete] [--dry_run] -- [trainer flags, e.g. --flagfile=configs/tpu_v5e_8.cfg]
#
# --delete deletes the VM when the script ends, even after a failure.
# --dry_run prints the commands instead of running them.
set -euo pipefail

usage() { sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit "${1:-2}"; }
fail() { echo "tpu_vm.sh: $*" >&2; usage >&2; }

NAME=seedlings-tpu PROJECT="" ZONE="" ACCELERATOR_TYPE=v5litepod-8 VERSION=v2-alpha-tpuv5-lite
DELETE=0 DRY_RUN=0
while (($#)); do
  case "$1" in
    --name|--project|--zone|--accelerator_type|--version)  # `--flag value` -> `--flag=value`
      (($# > 1)) || fail "$1 needs a value"; set -- "$1=$2" "${@:3}"; continue ;;
    --name=*) NAME=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --accelerator_type=*) ACCELERATOR_TYPE=${1#*=} ;;
    --version=*) VERSION=${1#*=} ;;
    --delete) DELETE=1 ;;
    --dry_run) DRY_RUN=1 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) fail "unknown argument $1 (trainer flags go after --)" ;;
  esac
  shift
done
[[ -n $PROJECT && -n $ZONE ]] || fail "--project and --zone are required"

run() { if ((DRY_RUN)); then printf '%q ' "$@"; echo; else "$@"; fi; }
TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE" --project="$PROJECT")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ARCHIVE="${TMPDIR:-/tmp}/seedlings-$NAME.tgz"
TRAINER_FLAGS=""
(($#)) && TRAINER_FLAGS=$(printf ' %q' "$@")

# Reuse the VM if it exists (a dry run cannot know, so it always shows the create).
if ((DRY_RUN)) || ! "${TPU[@]}" describe "$NAME" "${WHERE[@]}" >/dev/null 2>&1; then
  run "${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION"
fi
# An idle TPU still bills, so with --delete it goes away however the script ends.
((DELETE)) && trap 'run "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet' EXIT

run tar -czf "$ARCHIVE" --exclude=__pycache__ -C "$ROOT" setup.py README.md input_pipeline trainer launch configs
run "${TPU[@]}" scp "$ARCHIVE" "$NAME:seedlings.tgz" --worker=all "${WHERE[@]}"
# libtpu builds matching tensorflow-tpu are published on the libtpu-tf-releases index.
run "${TPU[@]}" ssh "$NAME" --worker=all "${WHERE[@]}" --command="rm -rf seedlings && mkdir seedlings \
&& tar -xzf seedlings.tgz -C seedlings && python3 -m pip install -q './seedlings[tpu]' \
-f https://storage.googleapis.com/libtpu-tf-releases/index.html"
# Runs from ~/seedlings so that --flagfile=configs/... finds the copied configs.
run "${TPU[@]}" ssh "$NAME" --worker=all "${WHERE[@]}" \
  --command="cd seedlings && python3 -m trainer.main --strategy=tpu --tpu=local$TRAINER_FLAGS"
