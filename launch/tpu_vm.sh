#!/usr/bin/env bash
# Trains on a Cloud TPU VM: creates it (or reuses it), copies this repository to every
# worker, installs it with the `tpu` extra, runs the trainer on all workers with
# --strategy=tpu --tpu=local, streaming its logs, and optionally deletes the VM.
#
#   launch/tpu_vm.sh --project=P --zone=Z [--name=seedlings-tpu]
#       [--accelerator_type=v5litepod-8] [--version=v2-alpha-tpuv5-lite]
#       [--delete] [--dry_run] -- --model_dir=gs://BUCKET/RUN [more trainer flags,
#       e.g. --flagfile=configs/tpu_v5e_8.cfg --data_dir=gs://BUCKET/records]
#
# --delete deletes the VM when the script ends, even after a failure.
# --dry_run prints the commands instead of running them.
# Before anything is created, the trainer flags are parsed with the trainer's own definitions
# by $PYTHON (default python3, with this repository's requirements, e.g. `pip install -e .`).
# --model_dir is required and must be gs://: the VM has no Vertex AI folders, and its disk
# goes away with --delete.
# Exit status: 2 for a bad argument (one line on stderr, nothing created); otherwise gcloud's
# or the trainer's.
set -euo pipefail

usage() { sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit "${1:-2}"; }
# Mistakes are found before anything is created: one line, and exit status 2.
fail() { echo "tpu_vm.sh: error: $*" >&2; exit 2; }

NAME=seedlings-tpu PROJECT="" ZONE="" ACCELERATOR_TYPE=v5litepod-8 VERSION=v2-alpha-tpuv5-lite
DELETE=0 DRY_RUN=0
while (($#)); do
  case "$1" in
    --name|--project|--zone|--accelerator_type|--version)  # `--flag value` -> `--flag=value`
      (($# > 1)) && [[ $2 != -* ]] || fail "$1 needs a value"; set -- "$1=$2" "${@:3}"; continue ;;
    --name=*) NAME=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --accelerator_type=*) ACCELERATOR_TYPE=${1#*=} ;;
    --version=*) VERSION=${1#*=} ;;
    --delete) DELETE=1 ;;
    --dry_run) DRY_RUN=1 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) fail "unknown argument $1 (trainer flags go after --; --help shows the usage)" ;;
  esac
  shift
done

# gcloud would take most of these, and fail only once the VM or its queue is reached.
[[ -n $PROJECT ]] || fail "--project is required"
[[ -n $ZONE ]] || fail "--zone is required, e.g. --zone=us-west4-a (one that offers the TPU)"
# Project IDs as launch/custom_job.py takes them: also legacy domain:id ones, and project numbers.
PROJECT_ID='^([a-z][-a-z0-9.]*:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$|^[0-9]{1,20}$'
[[ $PROJECT =~ $PROJECT_ID ]] || fail "--project=$PROJECT is not a project ID (6-30 lowercase" \
  "letters, digits and hyphens, starting with a letter, not ending with a hyphen)"
[[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || fail "--zone=$ZONE is not a zone like us-west4-a"
[[ $NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || fail "--name=$NAME is not a TPU name (up" \
  "to 63 lowercase letters, digits and hyphens, starting with a letter, not ending with a hyphen)"
[[ $ACCELERATOR_TYPE =~ ^(v2|v3|v4|v5litepod|v5p|v6e)-[0-9]+$ ]] || fail \
  "--accelerator_type=$ACCELERATOR_TYPE is not a TPU type like v5litepod-8 (or v2-8, v3-8," \
  "v4-8, v5p-8, v6e-8, ...)"
[[ $VERSION =~ ^[a-z0-9][-a-z0-9._]*$ ]] || fail "--version=$VERSION is not a TPU software" \
  "version like v2-alpha-tpuv5-lite"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HARDWARE_FLAGS=(--strategy=tpu --tpu=local)  # The trainer flags a TPU VM needs.
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || fail "no $PYTHON to check the trainer flags with: install" \
  "Python 3 and this repository (pip install -e $ROOT), or set PYTHON"
# The same check as launch.vertex's, so a typo fails here and not on a VM that took long to get.
rc=0
problem=$(cd "$ROOT" && "$PYTHON" -m launch.trainer_args --prog=tpu_vm.sh \
  "${HARDWARE_FLAGS[@]/#/--sets=}" --needs_model_dir -- "$@" 2>&1) || rc=$?
if ((rc == 2)); then echo "$problem" >&2; exit 2; fi
((rc == 0)) || fail "$PYTHON could not check the trainer flags (${problem##*$'\n'}): run" \
  "pip install -e $ROOT, or set PYTHON to a Python that has its requirements"

run() { if ((DRY_RUN)); then printf '%q ' "$@"; echo; else "$@"; fi; }
TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE" --project="$PROJECT")
ARCHIVE="${TMPDIR:-/tmp}/seedlings-$NAME.tgz"
TRAINER_FLAGS=""
(($#)) && TRAINER_FLAGS=$(printf ' %q' "$@")

# Reuse the VM if it exists (a dry run cannot know, so it always shows the create), but not
# one of another type: the trainer flags were chosen for this one.
if ((DRY_RUN)) || ! EXISTING=$("${TPU[@]}" describe "$NAME" "${WHERE[@]}" \
    --format='value(acceleratorType)' 2>/dev/null); then
  run "${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION"
elif [[ -n $EXISTING && ${EXISTING##*/} != "$ACCELERATOR_TYPE" ]]; then
  fail "TPU VM $NAME already exists as a ${EXISTING##*/}, not $ACCELERATOR_TYPE: use another" \
    "--name, or --accelerator_type=${EXISTING##*/}"
fi
# An idle TPU still bills, so with --delete it goes away however the script ends.
((DELETE)) && trap 'run "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet' EXIT

run tar -czf "$ARCHIVE" --exclude=__pycache__ -C "$ROOT" setup.py README.md input_pipeline trainer launch configs
run "${TPU[@]}" scp "$ARCHIVE" "$NAME:seedlings.tgz" --worker=all "${WHERE[@]}"
# libtpu builds matching tensorflow-tpu are published on the libtpu-tf-releases index.
run "${TPU[@]}" ssh "$NAME" --worker=all "${WHERE[@]}" --command="rm -rf seedlings && mkdir seedlings \
&& tar -xzf seedlings.tgz -C seedlings && python3 -m pip install -q './seedlings[tpu,edge]' \
-f https://storage.googleapis.com/libtpu-tf-releases/index.html"
# Runs from ~/seedlings so that --flagfile=configs/... finds the copied configs.
run "${TPU[@]}" ssh "$NAME" --worker=all "${WHERE[@]}" \
  --command="cd seedlings && python3 -m trainer.main ${HARDWARE_FLAGS[*]}$TRAINER_FLAGS"
