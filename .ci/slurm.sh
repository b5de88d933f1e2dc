#!/usr/bin/env bash
# A real single-node SLURM 22.05 cluster on localhost, for CI and local development.
#
#   .ci/slurm.sh install   apt-get install munge, slurm daemons, slurm-client, slurmdbd, mariadb
#   .ci/slurm.sh start     write configs, start munged, mariadbd, slurmdbd, slurmctld, slurmd
#   .ci/slurm.sh stop      stop the daemons by their pidfiles
#   .ci/slurm.sh status    show the daemons and `sinfo`
#
# Runs as root on Debian 12 without systemd: package installs do not start services, so each
# daemon is started here and stopped by its pidfile. Every step is idempotent: running `start`
# twice leaves one of each daemon; `install` is quick when the packages are already there.
#
# Accounting (slurmdbd + mariadb) is not optional: submitit polls job states with `sacct`,
# and without accounting `result()` on a cancelled job never returns.
set -euo pipefail

CLUSTER_NAME="${DEEPLENSE_SLURM_CLUSTER:-deeplense}"
PARTITION="${DEEPLENSE_SLURM_PARTITION:-debug}"
ETC=/etc/slurm
STATE=/var/lib/deeplense-slurm          # slurmctld state, slurmd spool, mariadb data
LOGS=/var/log/slurm
MYSQL_DATA="$STATE/mysql"
MYSQL_RUN=/run/mysqld                   # owned by mysql: socket, pid and error log live here
MYSQL_SOCK="$MYSQL_RUN/mysqld.sock"
MYSQL_PID="$MYSQL_RUN/mysqld.pid"
MUNGE_PID=/run/munge/munged.pid
SLURMDBD_PID=/run/slurmdbd.pid
SLURMCTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
DB_USER=slurm
DB_PASS_FILE="$STATE/dbpass"
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

log() { printf '[slurm.sh] %s\n' "$*" >&2; }
die() { printf '[slurm.sh] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

need_root() { [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts daemons)"; }

# running PIDFILE -> true when the pidfile names a live process
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_for SECONDS DESCRIPTION COMMAND... -> poll COMMAND every 0.2 s
wait_for() {
    local timeout="$1" what="$2"; shift 2
    local deadline=$(( $(date +%s) + timeout ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            die "timed out after ${timeout}s waiting for $what (logs in $LOGS and $MYSQL_RUN)"
        fi
        sleep 0.2
    done
}

installed() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
    done
}

cmd_install() {
    need_root
    local t0; t0=$(now)
    if installed; then
        log "packages already installed (${PACKAGES[*]})"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    log "installed ${PACKAGES[*]} in $(elapsed "$t0") s"
}

write_configs() {
    mkdir -p "$ETC" "$LOGS" "$STATE/slurmctld" "$STATE/slurmd"
    local cpus mem_total real_mem
    cpus=$(nproc)
    mem_total=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    [ -n "$mem_total" ] || die "could not read RealMemory from 'slurmd -C'"
    real_mem=$(( mem_total * 9 / 10 ))   # above what slurmd reports -> node drained
    cat > "$ETC/slurm.conf.new" <<EOF
# Written by .ci/slurm.sh: single-node cluster on localhost.
ClusterName=$CLUSTER_NAME
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
MpiDefault=none
# No cgroups here: limits are used for scheduling only, not enforced.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default memory per CPU a job without --mem takes the whole node.
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
ReturnToService=2
# Requeue: submitit asks for --signal=USR2@90 and, on that signal, checkpoints and runs
# 'scontrol requeue'. Jobs must be requeueable, and a killed step should go quickly.
JobRequeue=1
KillWait=5
# A requeued job may start again only once its old step credentials expire (the same job id
# on the same node is refused with "Job credential revoked" before that); SLURM holds it for
# cred_expire seconds (default 120). 10 s keeps the requeue tests short.
AuthInfo=cred_expire=10
# On preemption, also send the job's --signal (USR2), as clusters that preempt do.
SlurmctldParameters=preempt_send_user_signal
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$ETC/slurm.conf.new" "$ETC/slurm.conf"
    chmod 644 "$ETC/slurm.conf"

    if [ ! -s "$DB_PASS_FILE" ]; then
        (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$DB_PASS_FILE")
    fi
    (umask 077; cat > "$ETC/slurmdbd.conf.new" <<EOF
# Written by .ci/slurm.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$SLURMDBD_PID
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=$DB_USER
StoragePass=$(cat "$DB_PASS_FILE")
EOF
    )
    mv "$ETC/slurmdbd.conf.new" "$ETC/slurmdbd.conf"
    chmod 600 "$ETC/slurmdbd.conf"
}

start_munge() {
    if running "$MUNGE_PID"; then log "munged already running"; return 0; fi
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock "$MUNGE_PID"
    runuser -u munge -- /usr/sbin/munged
    wait_for 10 "munged" bash -c 'munge -n | unmunge'
}

mysql_root() { mariadb --protocol=socket --socket="$MYSQL_SOCK" -u root "$@"; }

start_mariadb() {
    if running "$MYSQL_PID"; then log "mariadbd already running"; else
        mkdir -p "$MYSQL_DATA" "$MYSQL_RUN"
        chown mysql:mysql "$MYSQL_DATA" "$MYSQL_RUN"
        if [ ! -d "$MYSQL_DATA/mysql" ]; then
            mariadb-install-db --user=mysql --datadir="$MYSQL_DATA" \
                --auth-root-authentication-method=socket --skip-test-db \
                >"$LOGS/mariadb-install-db.log" 2>&1 || die "mariadb-install-db failed: see $LOGS/mariadb-install-db.log"
        fi
        rm -f "$MYSQL_SOCK"
        setsid nohup mariadbd --user=mysql --datadir="$MYSQL_DATA" --skip-networking \
            --socket="$MYSQL_SOCK" --pid-file="$MYSQL_PID" \
            --log-error="$MYSQL_RUN/mariadbd.err" </dev/null >/dev/null 2>&1 &
        wait_for 30 "mariadbd" mysql_root -e 'SELECT 1'
    fi
    mysql_root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$(cat "$DB_PASS_FILE")';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$(cat "$DB_PASS_FILE")';
GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    if running "$SLURMDBD_PID"; then log "slurmdbd already running"; else
        slurmdbd
    fi
    wait_for 30 "slurmdbd" sacctmgr -n list cluster
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
        sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
    fi
}

node_state() { sinfo -h -N -n localhost -o %T 2>/dev/null | head -n1; }
node_idle() { case "$(node_state)" in idle|mixed|allocated) return 0 ;; *) return 1 ;; esac; }

start_slurm() {
    if running "$SLURMCTLD_PID"; then
        log "slurmctld already running; re-reading slurm.conf"
        scontrol reconfigure >/dev/null 2>&1 || true
    else
        slurmctld
    fi
    wait_for 30 "slurmctld" scontrol ping
    if running "$SLURMD_PID"; then log "slurmd already running"; else
        slurmd -N localhost
    fi
    local deadline=$(( $(date +%s) + 30 ))
    until node_idle; do
        case "$(node_state)" in
            *drain*|down*|*fail*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
        esac
        [ "$(date +%s)" -lt "$deadline" ] || die "node not idle after 30 s: $(sinfo -N -l 2>&1)"
        sleep 0.3
    done
    wait_for 30 "sacct" sacct -n -X -S now-1minute
}

cmd_start() {
    need_root
    installed || die "packages missing: run '.ci/slurm.sh install' first"
    local t0; t0=$(now)
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurm
    local cpus mem
    cpus=$(sinfo -h -N -n localhost -o %c | head -n1)
    mem=$(sinfo -h -N -n localhost -o %m | head -n1)
    echo "SLURM cluster '$CLUSTER_NAME' up in $(elapsed "$t0") s: node localhost $(node_state)," \
        "partition $PARTITION, $cpus CPUs, ${mem} MB, accounting via slurmdbd (logs in $LOGS)"
}

stop_pidfile() {
    local name="$1" pidfile="$2" pid i
    if ! running "$pidfile"; then rm -f "$pidfile"; return 0; fi
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $name"; rm -f "$pidfile"; return 0; }
        sleep 0.1
    done
    log "$name did not stop in 10 s; killing"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

cmd_stop() {
    need_root
    stop_pidfile slurmd "$SLURMD_PID"
    stop_pidfile slurmctld "$SLURMCTLD_PID"
    stop_pidfile slurmdbd "$SLURMDBD_PID"
    stop_pidfile mariadbd "$MYSQL_PID"
    stop_pidfile munged "$MUNGE_PID"
}

cmd_status() {
    local n f
    for n in munged:$MUNGE_PID mariadbd:$MYSQL_PID slurmdbd:$SLURMDBD_PID \
             slurmctld:$SLURMCTLD_PID slurmd:$SLURMD_PID; do
        f=${n#*:}
        if running "$f"; then echo "${n%%:*}: running (pid $(cat "$f"))"
        else echo "${n%%:*}: stopped"; fi
    done
    if command -v sinfo >/dev/null 2>&1; then
        sinfo || true
    else
        echo "sinfo: not installed"
    fi
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    *) echo "usage: $0 {install|start|stop|restart|status}" >&2; exit 2 ;;
esac
