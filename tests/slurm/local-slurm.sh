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
# AHA_SLURM_NODES=N (default 1; root only for N > 1): N nodes aha-n1..aha-nN, each its own host
# (see start_nodes) on AHA_SLURM_NET.2.., the controller on .1 (default: the first free 10.77.X).
set -euo pipefail

PARTITION=${AHA_SLURM_PARTITION:-aha-test}
FAKE_GPUS=${AHA_SLURM_GPUS:-2}
GPU_TYPE=${AHA_SLURM_GPU_TYPE:-testgpu}
NODES=${AHA_SLURM_NODES:-1}
NET=${AHA_SLURM_NET:-}

die() { echo "local-slurm: $*" >&2; exit 1; }
[[ $FAKE_GPUS =~ ^[0-9]+$ ]] || die "AHA_SLURM_GPUS must be a number, not '$FAKE_GPUS'"
[[ $NODES =~ ^[1-9][0-9]?$ ]] && [ "$NODES" -le 50 ] || die "AHA_SLURM_NODES must be 1 to 50, not '$NODES'"
octet='(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])'
[ -z "$NET" ] || [[ $NET =~ ^$octet\.$octet\.$octet$ ]] || die "AHA_SLURM_NET must be three octets (a /24), not '$NET'"

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

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

node_name() { echo "aha-n$1"; }  # node_name I: the name (and hostname) of node I of N > 1
node_addr() { echo "$NET.$(($1 + 1))"; }

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
  # One node: this host, on 127.0.0.1. N nodes: aha-n1..aha-nN, each in its own network namespace
  # (so each slurmd may use the same port), sharing the CPUs and splitting the memory.
  local names=() addrs=() ctld_addr=127.0.0.1 what=single-node spool=$dir/spool
  local pidfile=$dir/slurmd.pid logfile=$dir/log/slurmd.log i
  if [ "$NODES" -eq 1 ]; then
    names=("$host") addrs=(127.0.0.1)
  else
    for ((i = 1; i <= NODES; i++)); do names+=("$(node_name "$i")") addrs+=("$(node_addr "$i")"); done
    ctld_addr=$NET.1 what=$NODES-node spool=$dir/spool/%n
    pidfile=$dir/slurmd-%n.pid logfile=$dir/log/slurmd-%n.log
    mem_mb=$((mem_mb / NODES))
  fi
  local gres_line="" node_gres=""
  if [ "$FAKE_GPUS" -gt 0 ]; then
    gres_line="GresTypes=gpu"
    node_gres=" Gres=gpu:$GPU_TYPE:$FAKE_GPUS"
    # slurmd drops GPUs without device files: give each a character device with /dev/null's
    # numbers (a plain file also works, with an error in slurmd.log, where mknod is not allowed).
    : >"$dir/gres.conf"
    local n g devdir
    for n in "${names[@]}"; do
      devdir=$dir/dev
      [ "$NODES" -eq 1 ] || devdir=$dir/dev/$n
      mkdir -p "$devdir"
      for ((g = 0; g < FAKE_GPUS; g++)); do
        mknod "$devdir/gpu$g" c 1 3 2>/dev/null || touch "$devdir/gpu$g"
      done
      echo "NodeName=$n Name=gpu Type=$GPU_TYPE File=$devdir/gpu[0-$((FAKE_GPUS - 1))]" >>"$dir/gres.conf"
    done
  fi
  local node_lines="" partition_nodes
  for i in "${!names[@]}"; do
    node_lines+="NodeName=${names[i]} NodeAddr=${addrs[i]} NodeHostname=${names[i]} CPUs=$cpus Sockets=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem_mb$node_gres State=UNKNOWN"$'\n'
  done
  partition_nodes=$(IFS=,; echo "${names[*]}")
  cat >"$dir/slurm.conf" <<EOF
# Written by tests/slurm/local-slurm.sh: a throwaway $what cluster on localhost.
ClusterName=aha-local
SlurmctldHost=$host($ctld_addr)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$pidfile
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$logfile
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
${node_lines}PartitionName=$PARTITION Nodes=$partition_nodes Default=YES MaxTime=INFINITE State=UP
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
  local dir=$1 states="" all_idle
  for _ in $(seq 60); do
    # One `name=state` a node, e.g. "aha-n1=idle aha-n2=down*".
    states=$(sinfo -h -N -o '%N=%t' 2>/dev/null | sort -u | paste -sd ' ' || true)
    all_idle=$(printf '%s\n' "$states" | tr ' ' '\n' | grep -c '=idle$' || true)
    [ "$all_idle" = "$NODES" ] && [ "$(wc -w <<<"$states")" = "$NODES" ] && return 0
    sleep 0.5
  done
  echo "--- slurmctld.log" >&2; tail -20 "$dir/log/slurmctld.log" >&2 || true
  local log
  for log in "$dir"/log/slurmd*.log; do
    echo "--- ${log##*/}" >&2; tail -20 "$log" >&2 || true
  done
  [ "$NODES" -eq 1 ] && die "node not idle after 30 s (sinfo says '${states#*=}')"
  die "not all $NODES nodes idle after 30 s (sinfo says '${states}')"
}

# N > 1 nodes, each its own host on this one. (Several `slurmd -N NAME` on this host's network,
# with a Port each, do run with Debian's 22.05, but then every node is this host: one hostname, one
# address, one set of ports, so multi-node jobs cannot tell their nodes apart.) Node I is a process
# holding new network, UTS and mount namespaces (pid in DIR/ns/NAME.pid): hostname aha-nI, address
# AHA_SLURM_NET.(I+1) on a veth whose other end is on a bridge with AHA_SLURM_NET.1 (this host:
# slurmctld and clients), DIR/hosts bind-mounted on /etc/hosts, which names every node and this
# host, and DIR/resolv.conf on /etc/resolv.conf. The mount namespace is a slave of this host's, so
# the file tree (and what is mounted later) is shared, as on a cluster file system. DIR/network
# keeps what `stop` removes. This host does not resolve the node names: it uses NodeAddr.
net_names() {  # sets BRIDGE from NET: aha-B-C for B.C the second and third octet
  local rest=${NET#*.}
  BRIDGE=aha-${rest%.*}-${rest#*.}
}

in_ns() {  # in_ns PID CMD...: run CMD in node PID's namespaces
  local pid=$1
  shift
  nsenter --target "$pid" --net --uts --mount -- "$@"
}

subnet_in_use() { ip -o -4 addr show | grep -q " inet ${1//./\\.}\."; }

claim_network() {  # sets NET and BRIDGE: AHA_SLURM_NET, or the first 10.77.X whose bridge we add
  local dir=$1 tool x
  [ "$(id -u)" = 0 ] || die "AHA_SLURM_NODES > 1 needs root (network namespaces, veth, mount)"
  for tool in ip unshare nsenter; do command -v "$tool" >/dev/null || die "$tool not found (iproute2, util-linux)"; done
  if [ -n "$NET" ]; then
    net_names
    subnet_in_use "$NET" && die "$NET.0/24 is already in use on this host: set AHA_SLURM_NET to a free /24"
    ip link add "$BRIDGE" type bridge 2>/dev/null ||
      die "cannot add bridge $BRIDGE: another multi-node cluster on $NET.0/24? Stop it, or set AHA_SLURM_NET"
  else
    # Adding the bridge claims the subnet, also against a cluster starting beside this one.
    for ((x = 0; x < 256; x++)); do
      NET=10.77.$x
      net_names
      subnet_in_use "$NET" && continue
      ip link add "$BRIDGE" type bridge 2>/dev/null && break
    done
    [ "$x" -lt 256 ] || die "no free 10.77.X.0/24 with bridge aha-77-X: set AHA_SLURM_NET"
  fi
  printf 'NET=%s\nBRIDGE=%s\n' "$NET" "$BRIDGE" >"$dir/network"
}

start_nodes() {
  local dir=$1 host i name addr pid comm
  host=$(hostname -s)
  mkdir -p "$dir/ns"
  {
    echo "# Written by tests/slurm/local-slurm.sh: /etc/hosts of its nodes."
    echo "127.0.0.1 localhost"
    echo "::1 localhost ip6-localhost ip6-loopback"
    echo "$NET.1 $host"
    for ((i = 1; i <= NODES; i++)); do echo "$(node_addr "$i") $(node_name "$i")"; done
  } >"$dir/hosts"
  # No DNS on the nodes (nothing routes their packets on): lookups the hosts file cannot answer,
  # such as torch's reverse lookups of IPv4-mapped peers, fail at once instead of in 10 s.
  printf '# Written by tests/slurm/local-slurm.sh: no DNS on its nodes.\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$dir/resolv.conf"
  ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for ((i = 1; i <= NODES; i++)); do
    name=$(node_name "$i") addr=$(node_addr "$i")
    # Detached from this script's output, or a caller reading it would wait for the holder.
    unshare --net --uts --mount --propagation slave sleep infinity </dev/null >/dev/null 2>&1 &
    pid=$!
    echo "$pid" >"$dir/ns/$name.pid"
    comm=""
    for _ in $(seq 50); do  # unshare execs sleep once the namespaces are made
      comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
      [ "$comm" = sleep ] && break
      sleep 0.1
    done
    [ "$comm" = sleep ] || die "namespace holder for $name (pid $pid) not ready after 5 s ('$comm')"
    ip link add "$BRIDGE-$i" type veth peer name eth0 netns "$pid"
    ip link set "$BRIDGE-$i" master "$BRIDGE" up
    in_ns "$pid" hostname "$name"
    in_ns "$pid" mount --bind "$dir/hosts" /etc/hosts
    if [ -e /etc/resolv.conf ]; then in_ns "$pid" mount --bind "$dir/resolv.conf" /etc/resolv.conf; fi
    in_ns "$pid" ip link set lo up
    in_ns "$pid" ip addr add "$addr/24" dev eth0
    in_ns "$pid" ip link set eth0 up
    in_ns "$pid" ip route add default via "$NET.1"
  done
}

wait_reachable() {  # wait_reachable PID NAME: until node NAME (in PID's namespaces) reaches slurmctld
  local pid=$1 name=$2 port
  port=$(sed -n 's/^SlurmctldPort=//p' "$SLURM_CONF")
  for _ in $(seq 20); do
    in_ns "$pid" timeout 1 bash -c "exec 3<>/dev/tcp/$NET.1/$port" 2>/dev/null && return 0
    sleep 0.5
  done
  die "node $name cannot reach slurmctld at $NET.1:$port after 30 s (veth $BRIDGE-${name#aha-n}, bridge $BRIDGE)"
}

start_slurmds() {
  local dir=$1 i name pid
  if [ "$NODES" -eq 1 ]; then
    slurmd -f "$SLURM_CONF"
    return
  fi
  for ((i = 1; i <= NODES; i++)); do
    name=$(node_name "$i")
    pid=$(cat "$dir/ns/$name.pid")
    mkdir -p "$dir/spool/$name"
    wait_reachable "$pid" "$name"
    in_ns "$pid" slurmd -f "$SLURM_CONF" -N "$name"
  done
}

stop_nodes() {  # the namespace holders, veths and bridge that start_nodes made
  local dir=$1 pidfile BRIDGE=""
  [ -s "$dir/network" ] || return 0
  BRIDGE=$(sed -n 's/^BRIDGE=//p' "$dir/network")
  for pidfile in "$dir"/ns/*.pid; do
    [ -e "$pidfile" ] || continue
    # Only our holder: a pid reused since is left alone.
    if [ "$(cat "/proc/$(cat "$pidfile")/comm" 2>/dev/null || true)" = sleep ]; then
      stop_pid "$pidfile" "namespace holder ${pidfile##*/}"
    fi
    rm -f "$pidfile"
  done
  # A namespace goes with its last process, and its veth end with it, taking the host end.
  local link
  for link in $(ip -o link show 2>/dev/null | sed -n "s/^[0-9]*: \($BRIDGE-[0-9]*\)@.*/\1/p"); do
    ip link del "$link" 2>/dev/null || true
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE" || { echo "local-slurm: could not remove bridge $BRIDGE" >&2; return 1; }
  fi
  rm -f "$dir/network"
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
  [ "$NODES" -eq 1 ] || claim_network "$dir"
  write_conf "$dir"
  write_srun_wrapper "$dir"
  export SLURM_CONF=$dir/slurm.conf
  [ "$NODES" -eq 1 ] || start_nodes "$dir"
  start_munged "$dir"
  slurmctld -f "$SLURM_CONF" -i
  start_slurmds "$dir"
  wait_idle "$dir"
  echo "SLURM_CONF=$SLURM_CONF"
  echo "PATH=$dir/bin:\$PATH"
  if [ "$NODES" -gt 1 ]; then
    echo "# nodes (in $dir/hosts, not in this host's /etc/hosts):$(for ((i = 1; i <= NODES; i++)); do printf ' %s=%s' "$(node_name "$i")" "$(node_addr "$i")"; done)"
  fi
}

alive() {  # alive PID: running, not a zombie (an init that reaps orphans late keeps those a while)
  kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

stop_pid() {  # stop_pid PIDFILE NAME: SIGTERM, wait up to 10 s, then SIGKILL
  local pidfile=$1 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && { echo "local-slurm: $2 ($pid) ignored SIGTERM, killing" >&2; kill -9 "$pid" 2>/dev/null || true; }
  fi
  rm -f "$pidfile"
}

stop() {
  local dir=$1
  [ -d "$dir" ] || die "no cluster directory $dir"
  dir=$(cd "$dir" && pwd)
  export SLURM_CONF=$dir/slurm.conf
  local pidfile
  if [ -s "$dir/slurmctld.pid" ] && compgen -G "$dir/slurmd*.pid" >/dev/null; then
    # Cancel what is still queued or running, so that no job step outlives its slurmd.
    scancel --user "$(id -un)" 2>/dev/null || true
    for _ in $(seq 60); do [ -z "$(squeue -h -t R,CG,PD 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  for pidfile in "$dir"/slurmd*.pid; do  # slurmd.pid, or slurmd-NODE.pid a node
    [ -e "$pidfile" ] || continue
    stop_pid "$pidfile" "${pidfile##*/}"
  done
  stop_pid "$dir/slurmctld.pid" slurmctld
  stop_pid "$dir/munge/munged.pid" munged
  stop_nodes "$dir"
}

[ $# -eq 2 ] || usage
case $1 in
  start) start "$2" ;;
  stop) stop "$2" ;;
  *) usage ;;
esac
