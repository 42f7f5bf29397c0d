#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (Debian/Ubuntu, as root).
#
#   launchers/start_slurm.sh          # install if needed, configure, start, wait until idle
#   launchers/stop_slurm.sh           # stop exactly the daemons this script started
#
# What it does: installs `slurm-wlm` and `munge` when missing, creates a munge key when there
# is none, writes /etc/slurm/slurm.conf (one node = this machine: all its CPUs, 80% of its RAM,
# its GPUs as gres when nvidia-smi sees any; one default partition `main`), starts munged,
# slurmctld and slurmd, records their pids in $ATTACKPSM_SLURM_STATE (default
# /var/run/attackpsm-slurm), and waits until the node is idle and `srun hostname` runs.
# Running it again while the daemons are up does nothing. It never overwrites a slurm.conf
# that it did not write (set ATTACKPSM_SLURM_FORCE=1 to replace it; a backup is kept).
set -euo pipefail

STATE="${ATTACKPSM_SLURM_STATE:-/var/run/attackpsm-slurm}"
CONF=/etc/slurm/slurm.conf
MARKER="# written by attackpsm launchers/start_slurm.sh"
SPOOL=/var/spool/attackpsm-slurm
LOGDIR=/var/log/attackpsm-slurm

say() { echo "[start_slurm] $*"; }
die() { echo "[start_slurm] error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts system daemons)"

alive() {  # alive <pidfile> <command name>: the recorded pid runs that command
  local pid
  [ -s "$1" ] || return 1
  pid="$(cat "$1")"
  [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

if alive "$STATE/munged.pid" munged && alive "$STATE/slurmctld.pid" slurmctld && alive "$STATE/slurmd.pid" slurmd; then
  say "already running (pids in $STATE)"
  sinfo
  exit 0
fi

# 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  say "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# 2. munge key and munged
install -d -o munge -g munge -m 0700 /etc/munge
install -d -o munge -g munge -m 0755 /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  say "creating /etc/munge/munge.key"
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
mkdir -p "$STATE"

# 3. slurm.conf
host="$(hostname -s)"
cpus="$(nproc)"
mem_mb="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)"
gpus=0
if command -v nvidia-smi >/dev/null; then
  gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
fi
if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
  [ "${ATTACKPSM_SLURM_FORCE:-0}" = 1 ] || die "$CONF exists and was not written by this script; set ATTACKPSM_SLURM_FORCE=1 to replace it"
  cp "$CONF" "$CONF.bak.$(date +%s)"
fi
install -d -m 0755 /etc/slurm "$SPOOL/ctld" "$SPOOL/d" "$LOGDIR"
gres_line=""
node_gres=""
if [ "$gpus" -gt 0 ]; then
  gres_line="GresTypes=gpu"
  node_gres="Gres=gpu:$gpus"
  : >/etc/slurm/gres.conf.tmp
  for ((i = 0; i < gpus; i++)); do
    echo "NodeName=$host Name=gpu File=/dev/nvidia$i" >>/etc/slurm/gres.conf.tmp
  done
  mv /etc/slurm/gres.conf.tmp /etc/slurm/gres.conf
fi
cat >"$CONF.tmp" <<EOF
$MARKER
ClusterName=attackpsm
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# short grace after scancel/timeout, and finished jobs leave the queue quickly
KillWait=5
MinJobAge=60
InactiveLimit=0
$gres_line
NodeName=$host CPUs=$cpus RealMemory=$mem_mb $node_gres State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
mv "$CONF.tmp" "$CONF"
say "wrote $CONF ($host: $cpus CPUs, ${mem_mb} MB, $gpus GPUs)"

# 4. daemons (each one daemonizes; its pid is recorded for stop_slurm.sh)
if ! alive "$STATE/munged.pid" munged; then
  su -s /bin/sh munge -c "/usr/sbin/munged --force --pid-file=/run/munge/munged.pid"
  for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  cp /run/munge/munged.pid "$STATE/munged.pid"
fi
munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge)"
if ! alive "$STATE/slurmctld.pid" slurmctld; then
  rm -f "$STATE/slurmctld.pid"
  slurmctld
fi
if ! alive "$STATE/slurmd.pid" slurmd; then
  rm -f "$STATE/slurmd.pid"
  slurmd
fi
for name in slurmctld slurmd; do
  for _ in $(seq 100); do alive "$STATE/$name.pid" "$name" && break; sleep 0.1; done
  alive "$STATE/$name.pid" "$name" || die "$name did not start (see $LOGDIR/$name.log)"
done

# 5. wait until the node takes jobs
for _ in $(seq 60); do
  state="$(sinfo -h -N -o '%T' 2>/dev/null | head -1)"
  [ "$state" = idle ] && break
  sleep 1
done
[ "$state" = idle ] || die "node state is '${state:-unknown}', not idle (see $LOGDIR)"
timeout 60 srun -N1 -t 1 hostname >/dev/null || die "srun hostname failed (see $LOGDIR)"
say "up: munged $(cat "$STATE/munged.pid"), slurmctld $(cat "$STATE/slurmctld.pid"), slurmd $(cat "$STATE/slurmd.pid")"
sinfo
