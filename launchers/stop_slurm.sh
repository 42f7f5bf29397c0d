#!/usr/bin/env bash
# Stop the daemons that launchers/start_slurm.sh started, by the pids it recorded (never by
# name), and cancel any jobs left in the queue first. Leaves packages and configuration.
set -uo pipefail

STATE="${ATTACKPSM_SLURM_STATE:-/var/run/attackpsm-slurm}"

say() { echo "[stop_slurm] $*"; }

if [ -s "$STATE/slurmctld.pid" ] && command -v scancel >/dev/null; then
  timeout 10 scancel --user="$(id -un)" 2>/dev/null || true
fi

for name in slurmd slurmctld slurmdbd mariadbd munged; do
  file="$STATE/$name.pid"
  [ -s "$file" ] || continue
  pid="$(cat "$file")"
  if [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    kill -TERM "$pid"
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    if [ -d "/proc/$pid" ]; then
      say "$name ($pid) ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid"
    fi
    say "stopped $name ($pid)"
  else
    say "$name ($pid) is not running"
  fi
  rm -f "$file"
done
