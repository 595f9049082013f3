#!/usr/bin/env bash
# A single-node SLURM cluster on this Debian machine, for trying sweeps (hydra/launcher=slurm)
# exactly as on a real cluster. Needs root and apt.
#
#   bash scripts/local_slurm.sh start    # install (once), configure, start; idempotent
#   bash scripts/local_slurm.sh status   # daemons, sinfo, sacct
#   bash scripts/local_slurm.sh stop     # stop what start started; fine when nothing runs
#
# What it sets up: munge (authentication), MariaDB + slurmdbd (the accounting database, so
# that `sacct` lists finished jobs: SLURM >= 20.11 has no file-based accounting that sacct
# reads), slurmctld and slurmd with one partition `debug` holding this node, its CPUs and
# 90 % of its memory read from the machine. Processes are tracked by /proc
# (proctrack/linuxproc), so no cgroup or systemd setup is needed; daemons run as root.
# Logs and pid files: /var/log/slurm, /run/slurm-local. stop stops MariaDB and munge only
# where start started them.
set -euo pipefail

CLUSTER=phasesgd
PARTITION=debug
CONF=/etc/slurm
RUN=/run/slurm-local
LOG=/var/log/slurm
STATE=/var/lib/slurm-local
DB_PASSWORD=phasesgd-local   # a local socket-only database for this node's job records
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

say() { echo "[local_slurm] $*"; }
die() { echo "[local_slurm] $*" >&2; exit 1; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq "$seconds"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  die "$what did not come up within ${seconds}s (logs in $LOG)"
}

preflight() {
  [[ $(id -u) == 0 ]] || die "needs root"
  [[ -f /etc/debian_version ]] || die "needs Debian (apt packages ${PACKAGES[*]})"
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]} == 0)) && return 0
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

write_config() {
  local host cpus mem_mb
  host=$(hostname -s)
  cpus=$(nproc --all)
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p "$CONF" "$RUN" "$LOG" "$STATE/ctld" "$STATE/d"
  cat >"$CONF/slurm.conf" <<EOF
# written by scripts/local_slurm.sh
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=60
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$CONF/slurmdbd.conf" <<EOF
# written by scripts/local_slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$CONF/slurmdbd.conf"
}

start_munge() {
  alive /run/munge/munged.pid && return 0
  mkdir -p /run/munge && chown munge:munge /run/munge
  [[ -s /etc/munge/munge.key ]] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged
  touch "$RUN/started-munged"
  wait_for 20 munged munge -n
}

start_database() {
  if ! mysqladmin ping >/dev/null 2>&1; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >/dev/null
    (mysqld_safe --skip-networking >/dev/null 2>&1 &)
    touch "$RUN/started-mariadb"
    wait_for 60 MariaDB mysqladmin ping
  fi
  mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start_daemon() {  # start_daemon NAME PIDFILE COMMAND...
  local name=$1 pidfile=$2; shift 2
  alive "$pidfile" && return 0
  "$@" || die "$name failed to start (see $LOG/$name.log)"
}

start() {
  preflight
  install_packages
  write_config
  start_munge
  start_database
  start_daemon slurmdbd "$RUN/slurmdbd.pid" slurmdbd
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  start_daemon slurmctld "$RUN/slurmctld.pid" slurmctld
  wait_for 60 slurmctld scontrol ping
  start_daemon slurmd "$RUN/slurmd.pid" slurmd
  wait_for 60 "node $(hostname -s)" bash -c "sinfo -h -N -o %t | grep -Eq '^(idle|mix|alloc)'"
  say "running: cluster $CLUSTER, partition $PARTITION, node $(hostname -s) ($(nproc --all) CPUs)"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE
  alive "$2" || return 0
  local pid; pid=$(cat "$2")
  kill "$pid"
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || { say "stopped $1"; return 0; }; sleep 1; done
  say "$1 (pid $pid) still running after 30 s"
}

stop() {
  stop_pidfile slurmd "$RUN/slurmd.pid"
  stop_pidfile slurmctld "$RUN/slurmctld.pid"
  stop_pidfile slurmdbd "$RUN/slurmdbd.pid"
  # MariaDB and munge only where start started them (they may serve other things here)
  if [[ -f $RUN/started-mariadb ]] && mysqladmin ping >/dev/null 2>&1; then mysqladmin shutdown && say "stopped MariaDB"; fi
  rm -f "$RUN/started-mariadb"
  [[ -f $RUN/started-munged ]] && stop_pidfile munged /run/munge/munged.pid
  rm -f "$RUN/started-munged"
}

status() {
  local rc=0
  for d in slurmdbd slurmctld slurmd; do
    if alive "$RUN/$d.pid"; then say "$d running (pid $(cat "$RUN/$d.pid"))"; else say "$d not running"; rc=1; fi
  done
  if ((rc == 0)); then sinfo; sacct -a -X -S now-1days -o JobID,JobName%30,State,ExitCode | tail -n 10; fi
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
