#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try launch/slurm.sbatch (and for the tests).
#
#   launch/slurm_local_cluster.sh          # as root: install if missing, configure, start; wait for the node
#   launch/slurm_local_cluster.sh stop     # stop the daemons it started
#
# Needs root (it writes /etc/slurm/slurm.conf and starts daemons). When slurmctld, slurmd or munge
# are missing it installs Debian's packages with apt-get. Safe to run again: a cluster that is up
# is left as it is. It never overwrites a slurm.conf it did not write.
# Exit codes: 0 the node is idle, 2 cannot start here (the line says why), 1 started but not ready.
set -euo pipefail

conf=/etc/slurm/slurm.conf
marker="# written by phi1_jax launch/slurm_local_cluster.sh"
state_dir=/var/lib/slurm
log_dir=/var/log/slurm
run_dir=/run/slurm
host=$(hostname)
# Memory the node offers jobs (MB): 90% of this machine's, so that --mem-per-cpu requests (datatrove asks
# 2G per CPU by default) are checked against something real rather than SLURM's default of 1 MB.
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)

fail() { echo "slurm_local_cluster: $*" >&2; exit 2; }

[[ $(id -u) -eq 0 ]] || fail "needs root (it writes $conf and starts slurmctld, slurmd, munged)"

stop_daemons() {
  local name pid_file
  for name in slurmd slurmctld; do
    pid_file=$run_dir/$name.pid
    if [[ -s $pid_file ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
      kill "$(cat "$pid_file")"
      echo "stopped $name"
    fi
  done
}

if [[ ${1:-} == stop ]]; then
  stop_daemons
  exit 0
elif [[ $# -gt 0 ]]; then
  fail "usage: $0 [stop]"
fi

# --- packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sinfo >/dev/null; then
  command -v apt-get >/dev/null || fail "slurmctld/slurmd/munge are not installed and there is no apt-get"
  echo "installing slurmctld slurmd slurm-client munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "apt-get update failed"
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || fail "apt-get install slurmctld slurmd slurm-client munge failed"
fi

# --- munge: a key, and munged running as the munge user
if [[ ! -s /etc/munge/munge.key ]]; then
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- munged
  for _ in $(seq 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
  done
  munge -n | unmunge >/dev/null || fail "munged does not answer (see /var/log/munge/munged.log)"
fi

# --- slurm.conf: this host is the controller and the one compute node
if [[ -e $conf ]] && ! grep -qxF "$marker" "$conf"; then
  fail "$conf exists and was not written by this script; not touching it"
fi
new_conf=$(cat <<EOF
$marker
ClusterName=phi1local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
# Time between SIGTERM and SIGKILL when a job is cancelled or preempted: the trainer saves then.
KillWait=60
StateSaveLocation=$state_dir/slurmctld
SlurmdSpoolDir=$state_dir/slurmd
SlurmctldPidFile=$run_dir/slurmctld.pid
SlurmdPidFile=$run_dir/slurmd.pid
SlurmctldLogFile=$log_dir/slurmctld.log
SlurmdLogFile=$log_dir/slurmd.log
NodeName=$host CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
mkdir -p "$state_dir/slurmctld" "$state_dir/slurmd" "$log_dir" "$run_dir"
changed=0
if [[ ! -e $conf ]] || [[ $(cat "$conf") != "$new_conf" ]]; then
  printf '%s\n' "$new_conf" > "$conf"
  changed=1
fi

running() { [[ -s $run_dir/$1.pid ]] && kill -0 "$(cat "$run_dir/$1.pid")" 2>/dev/null; }
if [[ $changed -eq 1 ]] && { running slurmctld || running slurmd; }; then
  echo "slurm.conf changed: restarting the daemons"
  stop_daemons
  sleep 2
fi
running slurmctld || slurmctld
running slurmd || slurmd

# --- wait for the node to take jobs
for _ in $(seq 60); do
  node_state=$(sinfo -h -N -n "$host" -o %t 2>/dev/null || true)
  case $node_state in
    idle|mix|alloc) echo "slurm: node $host $node_state (partition local, $(nproc) CPUs)"; exit 0 ;;
    down*|drain*) scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 1
done
echo "slurm_local_cluster: node $host is '${node_state:-unknown}' after 60 s (see $log_dir)" >&2
exit 1
