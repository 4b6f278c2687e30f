#!/usr/bin/env bash
# A real single-node SLURM on localhost, all state in one directory, for tests/integration/test_slurm.py.
#
#   tests/slurm/local-slurm.sh start DIR   install slurm-wlm + munge if missing (root: apt-get),
#                                           write DIR/slurm.conf, start munged, slurmctld, slurmd,
#                                           wait until the node is idle
#   tests/slurm/local-slurm.sh stop DIR    cancel jobs, stop the daemons by their pid files
#
# Clients (sbatch, squeue, snakemake's SLURM plugin) find the cluster by SLURM_CONF=DIR/slurm.conf;
# jobs need DIR/bin first on PATH (see write_srun_wrapper). `start` prints both settings.
# Settings (environment): AHA_SLURM_PARTITION (default aha-test), AHA_SLURM_GPUS (fake GPUs on the
# node, default 2), AHA_SLURM_GPU_TYPE (their GRES type, default testgpu). The fake GPUs are
# stand-in device files: they let SLURM schedule GPU requests on a machine without GPUs.
set -euo pipefail

PARTITION=${AHA_SLURM_PARTITION:-aha-test}
FAKE_GPUS=${AHA_SLURM_GPUS:-2}
GPU_TYPE=${AHA_SLURM_GPU_TYPE:-testgpu}

die() { echo "local-slurm: $*" >&2; exit 1; }
[[ $FAKE_GPUS =~ ^[0-9]+$ ]] || die "AHA_SLURM_GPUS must be a number, not '$FAKE_GPUS'"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

have_daemons() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; }

install_if_missing() {
  have_daemons && return 0
  [ "$(id -u)" = 0 ] || die "slurmctld/slurmd/munged missing and not root: install slurm-wlm and munge"
  echo "local-slurm: installing slurm-wlm and munge" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' own services (munge, slurmd, slurmctld) from starting at install time:
  # only the daemons started below, on this directory's files, may run.
  local policy=/usr/sbin/policy-rc.d added=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && added=1
  fi
  local rc=0
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge; } >&2 || rc=$?
  [ -n "$added" ] && rm -f "$policy"
  [ "$rc" = 0 ] || die "apt-get failed ($rc)"
  have_daemons || die "slurm-wlm/munge installed but daemons not on PATH"
}

free_port() {  # first TCP port from $1 that nothing listens on
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

write_conf() {
  local dir=$1 host cpus mem_mb ctld_port slurmd_port user
  host=$(hostname -s)
  cpus=$(nproc)
  # Leave a quarter of the available memory to the OS and the test itself.
  mem_mb=$(awk '/MemAvailable/ {print int($2 / 1024 * 0.75)}' /proc/meminfo)
  ctld_port=$(free_port 6817)
  slurmd_port=$(free_port $((ctld_port + 1)))
  user=$(id -un)
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  local gres_line="" node_gres=""
  if [ "$FAKE_GPUS" -gt 0 ]; then
    gres_line="GresTypes=gpu"
    node_gres="Gres=gpu:$GPU_TYPE:$FAKE_GPUS"
    # slurmd drops GPUs without device files: give each a character device with /dev/null's
    # numbers (a plain file also works, with an error in slurmd.log, where mknod is not allowed).
    mkdir -p "$dir/dev"
    local i
    for ((i = 0; i < FAKE_GPUS; i++)); do
      mknod "$dir/dev/gpu$i" c 1 3 2>/dev/null || touch "$dir/dev/gpu$i"
    done
    echo "NodeName=$host Name=gpu Type=$GPU_TYPE File=$dir/dev/gpu[0-$((FAKE_GPUS - 1))]" >"$dir/gres.conf"
  fi
  cat >"$dir/slurm.conf" <<EOF
# Written by tests/slurm/local-slurm.sh: a throwaway single-node cluster on localhost.
ClusterName=aha-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue this long: the plugin's squeue status checks need it.
MinJobAge=600
ReturnToService=2
KillWait=30
InactiveLimit=0
$gres_line
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem_mb $node_gres State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munged() {
  local dir=$1 mdir=$1/munge
  mkdir -p "$mdir"
  chmod 0755 "$dir" "$mdir"  # munged wants its socket's directory searchable by all
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile "$mdir/munge.key" 2>/dev/null
  else
    dd if=/dev/urandom of="$mdir/munge.key" bs=1024 count=1 status=none
  fi
  chmod 0600 "$mdir/munge.key"
  local args=(--socket="$mdir/munge.socket" --key-file="$mdir/munge.key"
    --pid-file="$mdir/munged.pid" --log-file="$mdir/munged.log" --seed-file="$mdir/munged.seed")
  if [ "$(id -u)" = 0 ] && id munge >/dev/null 2>&1; then
    chown -R munge: "$mdir"
    runuser -u munge -- munged "${args[@]}" || die "munged failed: $(tail -3 "$mdir/munged.log")"
  else
    munged "${args[@]}" || die "munged failed: $(tail -3 "$mdir/munged.log")"
  fi
  for _ in $(seq 50); do [ -S "$mdir/munge.socket" ] && return 0; sleep 0.1; done
  die "munged did not start: $(tail -5 "$mdir/munged.log" 2>/dev/null)"
}

wait_idle() {
  local dir=$1 state=""
  for _ in $(seq 60); do
    state=$(sinfo -h -o %t 2>/dev/null || true)
    [ "$state" = idle ] && return 0
    sleep 0.5
  done
  echo "--- slurmctld.log" >&2; tail -20 "$dir/log/slurmctld.log" >&2 || true
  echo "--- slurmd.log" >&2; tail -20 "$dir/log/slurmd.log" >&2 || true
  die "node not idle after 30 s (sinfo says '${state}')"
}

write_srun_wrapper() {
  # snakemake-executor-plugin-slurm-jobstep (0.6.1) drops every SLURM_* variable but a few
  # before its inner `srun`, SLURM_CONF included, so inside a job srun would look for
  # /etc/slurm/slurm.conf. Rather than writing there, put an srun first on PATH (which the job
  # inherits) that restores SLURM_CONF. Sites with a non-default SLURM_CONF need the same.
  local dir=$1 real
  real=$(command -v srun) || die "srun not found"
  mkdir -p "$dir/bin"
  printf '#!/bin/sh\nexport SLURM_CONF=%s\nexec %s "$@"\n' "$dir/slurm.conf" "$real" >"$dir/bin/srun"
  chmod 0755 "$dir/bin/srun"
}

start() {
  local dir=$1
  [ -e "$dir/slurmctld.pid" ] && die "$dir already holds a running cluster; stop it first"
  install_if_missing
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # A start that fails half-way stops what it started.
  trap 'rc=$?; [ "$rc" = 0 ] || stop "'"$dir"'" >/dev/null 2>&1 || true; exit "$rc"' EXIT
  write_conf "$dir"
  write_srun_wrapper "$dir"
  export SLURM_CONF=$dir/slurm.conf
  start_munged "$dir"
  slurmctld -f "$SLURM_CONF" -i
  slurmd -f "$SLURM_CONF"
  wait_idle "$dir"
  echo "SLURM_CONF=$SLURM_CONF"
  echo "PATH=$dir/bin:\$PATH"
}

stop_pid() {  # stop_pid PIDFILE NAME: SIGTERM, wait up to 10 s, then SIGKILL
  local pidfile=$1 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { echo "local-slurm: $2 ($pid) ignored SIGTERM, killing" >&2; kill -9 "$pid" 2>/dev/null || true; }
  fi
  rm -f "$pidfile"
}

stop() {
  local dir=$1
  [ -d "$dir" ] || die "no cluster directory $dir"
  dir=$(cd "$dir" && pwd)
  export SLURM_CONF=$dir/slurm.conf
  if [ -s "$dir/slurmctld.pid" ] && [ -s "$dir/slurmd.pid" ]; then
    # Cancel what is still queued or running, so that no job step outlives its slurmd.
    scancel --user "$(id -un)" 2>/dev/null || true
    for _ in $(seq 60); do [ -z "$(squeue -h -t R,CG,PD 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  stop_pid "$dir/slurmd.pid" slurmd
  stop_pid "$dir/slurmctld.pid" slurmctld
  stop_pid "$dir/munge/munged.pid" munged
}

[ $# -eq 2 ] || usage
case $1 in
  start) start "$2" ;;
  stop) stop "$2" ;;
  *) usage ;;
esac
