#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (Debian/Ubuntu, as root).
#
#   launchers/start_slurm.sh          # install if needed, configure, start, wait until idle
#   launchers/stop_slurm.sh           # stop exactly the daemons this script started
#
# What it does: installs `slurm-wlm`, `slurmdbd`, `munge` and `mariadb-server` when missing,
# creates a munge key when there is none, writes /etc/slurm/slurm.conf (one node = this
# machine: all its CPUs, 80% of its RAM, its GPUs as gres when nvidia-smi sees any; one
# default partition `main`) and slurmdbd.conf, starts munged, MariaDB, slurmdbd, slurmctld
# and slurmd, records their pids in $ATTACKPSM_SLURM_STATE (default /var/run/attackpsm-slurm),
# and waits until the node is idle, `srun hostname` runs and `sacct` answers.
# Job accounting is not optional here: submitit learns the state of a job that ends without
# a result (cancelled, killed, failed node) from `sacct`, and waits forever without it.
# Running the script again while the daemons are up does nothing. It never overwrites a
# slurm.conf that it did not write (ATTACKPSM_SLURM_FORCE=1 replaces it, keeping a backup).
set -euo pipefail

STATE="${ATTACKPSM_SLURM_STATE:-/var/run/attackpsm-slurm}"
CONF=/etc/slurm/slurm.conf
DBCONF=/etc/slurm/slurmdbd.conf
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

DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
ours() {  # ours <name>: started by this script (not a system service that was already up)
  [ ! -e "$STATE/$1.external" ]
}
all_alive() {
  local d
  for d in "${DAEMONS[@]}"; do
    ours "$d" || continue
    alive "$STATE/$d.pid" "$d" || return 1
  done
}
if all_alive && [ -e "$CONF" ] && [ "$(sha256sum <"$CONF")" = "$(cat "$STATE/slurm.conf.sha256" 2>/dev/null)" ]; then
  say "already running (pids in $STATE)"
  sinfo
  exit 0
fi

# 1. packages
missing=0
for cmd in slurmctld slurmd slurmdbd sacct munged mariadbd mariadb; do
  command -v "$cmd" >/dev/null || missing=1
done
if [ "$missing" = 1 ]; then
  say "installing slurm-wlm, slurmdbd, munge and mariadb-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
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
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
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
# the daemons must run with this file: restart the ones started with another version
changed=1
[ "$(sha256sum <"$CONF")" = "$(cat "$STATE/slurm.conf.sha256" 2>/dev/null)" ] && changed=0
say "wrote $CONF ($host: $cpus CPUs, ${mem_mb} MB, $gpus GPUs)"
# slurmdbd runs as root and reaches MariaDB as root over its unix socket (no password)
(
  umask 077
  cat >"$DBCONF.tmp" <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=attackpsm_slurm_acct
PidFile=$STATE/slurmdbd.pid
LogFile=$LOGDIR/slurmdbd.log
EOF
)
mv "$DBCONF.tmp" "$DBCONF"

# 4. daemons (each one daemonizes; its pid is recorded for stop_slurm.sh)
# munged and MariaDB may already run as system services (apt starts them where systemd
# runs): those are used as they are, and stop_slurm.sh leaves them alone
if ! alive "$STATE/munged.pid" munged && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "using the munged that is already running"
  touch "$STATE/munged.external"
  rm -f "$STATE/munged.pid"
elif ! alive "$STATE/munged.pid" munged; then
  rm -f "$STATE/munged.external"
  su -s /bin/sh munge -c "/usr/sbin/munged --force --pid-file=/run/munge/munged.pid"
  for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  cp /run/munge/munged.pid "$STATE/munged.pid"
fi
munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge)"
if ! alive "$STATE/mariadbd.pid" mariadbd && mariadb -e "select 1" >/dev/null 2>&1; then
  say "using the MariaDB server that is already running"
  touch "$STATE/mariadbd.external"
  rm -f "$STATE/mariadbd.pid"
elif ! alive "$STATE/mariadbd.pid" mariadbd; then
  rm -f "$STATE/mariadbd.external"
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  rm -f "$STATE/mariadbd.pid" /run/mysqld/mariadbd.pid
  setsid mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
    --pid-file=/run/mysqld/mariadbd.pid --skip-networking >"$LOGDIR/mariadbd.log" 2>&1 </dev/null &
  for _ in $(seq 150); do mariadb -e "select 1" >/dev/null 2>&1 && break; sleep 0.2; done
  mariadb -e "select 1" >/dev/null || die "MariaDB did not start (see $LOGDIR/mariadbd.log)"
  cp /run/mysqld/mariadbd.pid "$STATE/mariadbd.pid"
fi
if ! alive "$STATE/slurmdbd.pid" slurmdbd; then
  rm -f "$STATE/slurmdbd.pid"
  slurmdbd
  for _ in $(seq 150); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
  sacctmgr -n list cluster >/dev/null || die "slurmdbd did not start (see $LOGDIR/slurmdbd.log)"
fi
sacctmgr -n -P list cluster format=cluster | grep -qx attackpsm || sacctmgr -i add cluster attackpsm >/dev/null
for name in slurmctld slurmd; do
  if [ "$changed" = 1 ] && alive "$STATE/$name.pid" "$name"; then  # new slurm.conf: restart
    pid="$(cat "$STATE/$name.pid")"
    kill -TERM "$pid"
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  fi
  if ! alive "$STATE/$name.pid" "$name"; then
    rm -f "$STATE/$name.pid"
    "$name"
  fi
done
sha256sum <"$CONF" >"$STATE/slurm.conf.sha256"
for name in slurmdbd slurmctld slurmd; do
  for _ in $(seq 100); do alive "$STATE/$name.pid" "$name" && break; sleep 0.1; done
  alive "$STATE/$name.pid" "$name" || die "$name did not start (see $LOGDIR/$name.log)"
done

# 5. wait until the node takes jobs
for _ in $(seq 60); do
  state="$(sinfo -h -N -o '%T' 2>/dev/null | head -1)"
  case "$state" in idle | mixed | allocated) break ;; esac
  sleep 1
done
case "$state" in idle | mixed | allocated) ;; *) false ;; esac || die "node state is '${state:-unknown}', not idle (see $LOGDIR)"
timeout 60 srun -N1 -t 1 hostname >/dev/null || die "srun hostname failed (see $LOGDIR)"
sacct -n -X -o JobID >/dev/null || die "sacct does not answer (see $LOGDIR/slurmdbd.log)"
pids=""
for d in "${DAEMONS[@]}"; do ours "$d" && pids="$pids $d=$(cat "$STATE/$d.pid")"; done
say "up:$pids"
sinfo
