#!/usr/bin/env bash
# Runs the trainer on every worker of a TPU VM slice (one process per host; jax finds the
# coordinator, process count and ids from the TPU metadata: --config.distributed.auto=True).
#
#   launch/tpu_pod.sh TPU_NAME ZONE [PROJECT] -- --config=configs/phi1.py --workdir=gs://bucket/run \
#       --config.data.mixture=/data/code:0.87,/data/textbooks:0.13
#
# The repo must be at the same path on every worker (REPO_DIR, default ~/phi1_jax) with the
# package installed (pip install -e '.[tpu]'); workdir and data must be visible to all hosts
# (a GCS bucket or a shared disk): Orbax writes one checkpoint from all hosts together.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE [PROJECT] -- TRAINER_FLAGS..." >&2
  exit 2
fi
tpu_name=$1
zone=$2
shift 2
project_flag=()
if [[ $1 != "--" ]]; then
  project_flag=(--project "$1")
  shift
fi
if [[ ${1:-} != "--" ]]; then
  echo "error: put the trainer flags after --" >&2
  exit 2
fi
shift
repo_dir=${REPO_DIR:-'~/phi1_jax'}

# Quote each trainer flag for the remote shell.
remote_args=""
for arg in "$@"; do
  remote_args+=" $(printf '%q' "$arg")"
done
command="cd ${repo_dir} && python3 -m phi1_jax.train --config.distributed.auto=True${remote_args}"

gcloud compute tpus tpu-vm ssh "$tpu_name" --zone "$zone" "${project_flag[@]}" \
  --worker=all --command="$command"
