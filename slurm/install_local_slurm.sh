#!/usr/bin/env bash
# A real one-node Slurm on this machine, to run the batch scripts of slurm/ for real
# (tests/test_slurm_real.py). Debian's packages; the daemons are started directly, as
# containers have no systemd.
#   slurm/install_local_slurm.sh          install, configure, start; wait until the node is up
#   slurm/install_local_slurm.sh --stop   stop the daemons (a later run starts them again)
# Idempotent: with everything installed and up, it returns at once. Needs root.
# READY_TIMEOUT_S (default 60): how long to wait for the node to come up.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
SLURM_CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
# Two stand-in GPUs: character devices with /dev/null's numbers. slurmd drops a GPU that
# gres.conf gives no File= ("Removing file-less GPU"), and warns of a File= that is no
# device, so each needs one; their processes get CUDA_VISIBLE_DEVICES as on a GPU node.
GPUS=2
FAKE_GPU_DIR=/var/lib/slurm/fake_gpus
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
LOG_DIR=/var/log/slurm
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID=/run/munge/munged.pid
MUNGE_LOG=/var/log/munge/munged.log
SLURMCTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
POLICY_RC=/usr/sbin/policy-rc.d
NODE=$(hostname -s)
READY_TIMEOUT_S=${READY_TIMEOUT_S:-60}

die() {
  echo "error: $*" >&2
  exit 1
}

# Whether the process named in a pid file is alive and is that daemon (a pid file left
# from before a restart may name an unrelated process).
running() {
  local name=$1 pid_file=$2 pid
  [[ -s $pid_file ]] || return 1
  pid=$(<"$pid_file")
  [[ -r /proc/$pid/comm && $(<"/proc/$pid/comm") == "$name" ]]
}

stop_daemon() {
  local name=$1 pid_file=$2 pid
  running "$name" "$pid_file" || return 0
  pid=$(<"$pid_file")
  kill "$pid"
  for _ in $(seq 100); do
    [[ -d /proc/$pid ]] || return 0
    sleep 0.1
  done
  die "$name (pid $pid) did not stop within 10 s"
}

stop_all() {
  stop_daemon slurmd "$SLURMD_PID"
  stop_daemon slurmctld "$SLURMCTLD_PID"
  stop_daemon munged "$MUNGE_PID"
}

install_packages() {
  local package missing=()
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$package")
  done
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null ||
    die "apt-get not found: install the Debian packages ${missing[*]} by hand"
  echo "installing ${missing[*]}"
  apt-get update -q
  export DEBIAN_FRONTEND=noninteractive
  without_service_starts apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
}

# Runs a command while the packages' maintainer scripts may start no service: they would
# start the daemons before there is a configuration (this script starts them afterwards).
# policy-rc.d is Debian's switch for that; an existing one (containers have one) is kept.
without_service_starts() {
  if [[ -e $POLICY_RC ]]; then
    "$@"
    return
  fi
  trap 'rm -f "$POLICY_RC"' EXIT
  printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC" # 101: action forbidden
  chmod 755 "$POLICY_RC"
  "$@"
  rm -f "$POLICY_RC"
  trap - EXIT
}

slurm_conf() {
  local cpus memory_mib
  cpus=$(nproc)
  memory_mib=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
  cat <<EOF
# Written by slurm/install_local_slurm.sh: a one-node cluster on this machine.
ClusterName=local
# Loopback only: nothing of the test cluster is reachable from, or reaches, elsewhere.
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again only cred_expire (+1) seconds later: the default, 120 s,
# would idle the preemption test for two minutes. 10 s still covers a job step's launch
# on this machine (the credential's other use).
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups in a container: track a job's processes by parentage, bind no tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: job records live in slurmctld (scontrol show job) for MinJobAge seconds.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
# No mail from this cluster (the default, /bin/mail, is not installed: an error at start).
MailProg=/bin/true
SwitchType=switch/none
SchedulerType=sched/backfill
# A handful of jobs: a pass every 2 s costs nothing, and a requeued job then starts as soon
# as it is eligible again rather than at the next of the default minutely passes.
SchedulerParameters=sched_interval=2
# Cores are allocated, memory is not: jobs that ask for no memory can share the node.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# The batch scripts requeue themselves when preempted (scontrol requeue).
JobRequeue=1
# A node that comes back (daemons restarted in a new session) returns to service by itself.
ReturnToService=2
# Trust the node line below rather than draining the node when the hardware slurmd
# detects differs from it (a container may see more CPUs than nproc grants it).
SlurmdParameters=config_overrides
# Stand-in GPUs (see GRES_CONF), so that the scripts' GPU branch runs as on a GPU node.
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mib $( ((GPUS > 0)) && echo "Gres=gpu:$GPUS") State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

gres_conf() {
  echo "# Written by slurm/install_local_slurm.sh: stand-in GPUs, which are /dev/null."
  if ((GPUS > 0)); then echo "Name=gpu File=$FAKE_GPU_DIR/gpu[0-$((GPUS - 1))]"; fi
}

# Writes slurm.conf and gres.conf; returns 0 when either changed (running daemons must
# then restart).
write_config() {
  local changed=1
  write_if_changed "$SLURM_CONF" "$(slurm_conf)" && changed=0
  write_if_changed "$GRES_CONF" "$(gres_conf)" && changed=0
  return "$changed"
}

# write_if_changed FILE TEXT: returns 0 when it wrote FILE, 1 when FILE already held TEXT.
write_if_changed() {
  [[ -f $1 && $(<"$1") == "$2" ]] && return 1
  mkdir -p "$(dirname "$1")"
  printf '%s\n' "$2" >"$1"
}

prepare_dirs() {
  # The packages make these, but /run is emptied at boot (and the rest may have been
  # cleaned away); the daemons drop root and must own what they write.
  local munge_dirs=("$(dirname "$MUNGE_KEY")" /run/munge /var/lib/munge "$(dirname "$MUNGE_LOG")")
  mkdir -p "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" "${munge_dirs[@]}"
  chown slurm:slurm "$STATE_DIR" "$LOG_DIR"
  chown munge:munge "${munge_dirs[@]}"
  if [[ ! -s $MUNGE_KEY ]]; then
    mungekey --create --keyfile="$MUNGE_KEY"
  fi
  # munged refuses a key that others can read.
  chown munge:munge "$MUNGE_KEY"
  chmod 400 "$MUNGE_KEY"
}

# make_stand_in_gpus: the GPUS character devices; where this container may not make
# devices (no CAP_MKNOD), the node declares no GPUs (GPUS=0) and says so.
make_stand_in_gpus() {
  local i
  mkdir -p "$FAKE_GPU_DIR"
  for ((i = 0; i < GPUS; i++)); do
    [[ -c $FAKE_GPU_DIR/gpu$i ]] && continue
    rm -f "$FAKE_GPU_DIR/gpu$i"
    if ! mknod -m 666 "$FAKE_GPU_DIR/gpu$i" c 1 3; then
      echo "warning: mknod refused: the local Slurm declares no stand-in GPUs" >&2
      GPUS=0
      return
    fi
  done
}

start_daemons() {
  running munged "$MUNGE_PID" || runuser -u munge -- /usr/sbin/munged
  # slurmctld and slurmd daemonize themselves and write their pid files.
  running slurmctld "$SLURMCTLD_PID" || /usr/sbin/slurmctld
  running slurmd "$SLURMD_PID" || /usr/sbin/slurmd
}

# Whether slurmd has registered with slurmctld since the given time: a restarted
# slurmctld reports the node as it saved it (idle) before slurmd has said a word.
registered_since() {
  local started
  started=$(scontrol show node "$NODE" 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*' || true)
  started=${started#*=}
  [[ -n $started && $started != None ]] && (($(date -d "$started" +%s) >= $1))
}

# Waits until the node takes jobs: idle, or already running some (mixed, allocated).
wait_until_up() {
  local slurmd_started=$1 state="" deadline=$((SECONDS + READY_TIMEOUT_S))
  while ((SECONDS < deadline)); do
    state=$(sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null || true)
    if [[ $state =~ ^(idle|mixed|allocated)$ ]] && registered_since "$slurmd_started"; then
      echo "slurm is up: node $NODE $state (logs in $LOG_DIR)"
      return
    fi
    sleep 0.5
  done
  die "node $NODE not up after ${READY_TIMEOUT_S} s (state: '${state:-no answer}');" \
    "see $LOG_DIR/slurmctld.log, $LOG_DIR/slurmd.log and $MUNGE_LOG"
}

main() {
  ((EUID == 0)) || die "run as root: it installs packages and starts daemons"
  if [[ ${1:-} == --stop ]]; then
    stop_all
    echo "slurm stopped"
    return
  fi
  [[ $# -eq 0 ]] || die "unknown argument '$1' (expected none, or --stop)"
  install_packages
  make_stand_in_gpus
  if write_config; then
    stop_all
  fi
  prepare_dirs
  local slurmd_started=0
  running slurmd "$SLURMD_PID" || slurmd_started=$(date +%s)
  start_daemons
  wait_until_up "$slurmd_started"
}

main "$@"
