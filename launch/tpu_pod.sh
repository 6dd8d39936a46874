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
  echo "launch/tpu_pod.sh: error: put the trainer flags after --" >&2
  exit 2
fi
shift
if [[ " $* " != *" --config="* && " $* " != *" --config "* ]]; then
  echo "launch/tpu_pod.sh: error: the trainer flags need --config=CONFIG.py" >&2
  exit 2
fi

# The remote login shell (bash on TPU VM images) runs this line: every piece is quoted with
# printf %q, except a leading ~/ of REPO_DIR, which that shell expands to the worker's home.
repo_dir=${REPO_DIR:-'~/phi1_jax'}
if [[ $repo_dir == \~/* ]]; then
  # shellcheck disable=SC2088  # the remote shell expands this ~, not ours
  remote_dir='~/'$(printf '%q' "${repo_dir#\~/}")
else
  remote_dir=$(printf '%q' "$repo_dir")
fi
# The trainer's overrides must follow --config, so auto=True goes last.
command="cd ${remote_dir} && python3 -m phi1_jax.train"
for arg in "$@" --config.distributed.auto=True; do
  command+=" $(printf '%q' "$arg")"
done

gcloud compute tpus tpu-vm ssh "$tpu_name" --zone "$zone" "${project_flag[@]}" \
  --worker=all --command="$command"
