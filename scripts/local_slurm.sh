#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/workflow/test_slurm_local.py (make test-slurm).
#
#   scripts/local_slurm.sh start    # write slurm.conf, start munged (if needed), slurmctld, slurmd
#   scripts/local_slurm.sh status   # daemons, node state, jobs
#   scripts/local_slurm.sh stop     # cancel jobs, stop the daemons this script started, remove state
#
# Needs root and the Debian packages `slurm-wlm munge` (apt-get install -y slurm-wlm munge); no
# systemd. Everything lives under $RVI_SLURM_DIR (default /tmp/rvi-slurm): slurm.conf, state and
# spool directories, pid files, logs (log/) and the job completion log (jobcomp.txt: one line per
# finished job, with its state and partition). SLURM commands find the cluster through
#   export SLURM_CONF=$RVI_SLURM_DIR/slurm.conf
# (`start` prints that line). munge uses the packaged /etc/munge/munge.key and /run/munge. slurmd
# runs configless and links /run/slurm/conf to its copy of slurm.conf: the Snakemake job steps
# (`srun` with SLURM_* variables removed) find the cluster there.
#
# The cluster has no accounting database (sacct does not work): run Snakemake with
# `--slurm-status-command squeue`. MinJobAge is 300 s, so squeue keeps finished jobs long enough.
# Partitions (all on this node): $RVI_SLURM_PARTITIONS, default "normal gpu-normal" (the demo's
# queues), the first one being the default partition. The node has no GPUs.
set -euo pipefail

DIR=${RVI_SLURM_DIR:-/tmp/rvi-slurm}
PARTITIONS=${RVI_SLURM_PARTITIONS:-normal gpu-normal}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

log() { echo "local_slurm: $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
    local node_line node real_mem
    node_line=$(slurmd -C | head -n 1)
    node=$(hostname -s)
    real_mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    [[ -n $real_mem ]] || die "cannot read RealMemory from 'slurmd -C': $node_line"
    # Keep a margin below the real memory, or slurmd registers with less than configured and the
    # node is drained.
    node_line=$(sed "s/RealMemory=[0-9]*/RealMemory=$((real_mem * 9 / 10))/" <<<"$node_line")
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    {
        echo "# written by scripts/local_slurm.sh"
        echo "ClusterName=rvilocal"
        echo "SlurmctldHost=$node(127.0.0.1)"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "CredType=cred/munge"
        echo "StateSaveLocation=$DIR/state"
        echo "SlurmdSpoolDir=$DIR/spool"
        echo "SlurmctldPidFile=$DIR/slurmctld.pid"
        echo "SlurmdPidFile=$DIR/slurmd.pid"
        echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
        echo "SlurmdLogFile=$DIR/log/slurmd.log"
        echo "ProctrackType=proctrack/pgid"
        echo "TaskPlugin=task/none"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core_Memory"
        echo "DefMemPerCPU=1000"
        echo "SchedulerType=sched/backfill"
        echo "MpiDefault=none"
        echo "SwitchType=switch/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "AccountingStorageType=accounting_storage/none"
        echo "JobCompType=jobcomp/filetxt"
        echo "JobCompLoc=$DIR/jobcomp.txt"
        echo "MinJobAge=300"
        echo "ReturnToService=2"
        echo "MailProg=/bin/true"
        echo "SlurmctldParameters=enable_configless"
        echo "$node_line NodeAddr=127.0.0.1 State=UNKNOWN" | sed 's/ UpTime=[^ ]*//'
        local default=YES
        for partition in $PARTITIONS; do
            echo "PartitionName=$partition Nodes=$node Default=$default MaxTime=INFINITE State=UP"
            default=NO
        done
    } >"$CONF"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then
        log "munged already running; using it"
        return
    fi
    mkdir -p /run/munge
    chown munge:munge /run/munge
    su -s /bin/sh munge -c /usr/sbin/munged
    for _ in $(seq 50); do
        munge_ok && break
        sleep 0.2
    done
    munge_ok || die "munged did not start (see /var/log/munge/munged.log)"
    # Remember that we started it, so that `stop` ends it (and only then).
    cp /run/munge/munged.pid "$DIR/munged.pid"
}

wait_for_node() {
    local node state=""
    node=$(hostname -s)
    for _ in $(seq 120); do
        state=$(sinfo -h -n "$node" -o %t 2>/dev/null | head -n 1 || true)
        if [[ $state == idle ]]; then
            log "node $node idle; partitions: $PARTITIONS"
            return
        fi
        sleep 0.5
    done
    die "node $node not idle after 60 s (state '${state:-none}'); logs in $DIR/log"
}

start() {
    [[ $(id -u) -eq 0 ]] || die "needs root (slurmd runs jobs as their users)"
    for cmd in slurmctld slurmd sbatch squeue sinfo munged munge unmunge; do
        command -v "$cmd" >/dev/null || die "'$cmd' not found: apt-get install -y slurm-wlm munge"
    done
    if pid_alive "$DIR/slurmctld.pid" || pid_alive "$DIR/slurmd.pid"; then
        die "already running under $DIR (scripts/local_slurm.sh stop first)"
    fi
    if [[ -e /etc/slurm/slurm.conf ]]; then
        die "/etc/slurm/slurm.conf exists: this machine belongs to another SLURM setup (job steps would read it)"
    fi
    if (exec 3<>/dev/tcp/127.0.0.1/6817) 2>/dev/null; then
        die "port 6817 is in use: another slurmctld runs on this machine"
    fi
    mkdir -p "$DIR"
    write_conf
    start_munge
    slurmctld -c -f "$CONF" || die "slurmctld failed to start; see $DIR/log/slurmctld.log"
    # Configless slurmd: it fetches slurm.conf from slurmctld and links /run/slurm/conf to its cache.
    # Job steps need that: snakemake-executor-plugin-slurm-jobstep runs each job through `srun` with
    # every SLURM_* variable (SLURM_CONF too) removed, so srun falls back to /run/slurm/conf.
    slurmd --conf-server "127.0.0.1:6817" || die "slurmd failed to start; see $DIR/log/slurmd.log"
    for _ in $(seq 50); do
        pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid" && break
        sleep 0.2
    done
    pid_alive "$DIR/slurmctld.pid" || die "slurmctld is not running; see $DIR/log/slurmctld.log"
    pid_alive "$DIR/slurmd.pid" || die "slurmd is not running; see $DIR/log/slurmd.log"
    wait_for_node
    echo "export SLURM_CONF=$CONF"
}

stop_pid() {  # stop_pid NAME PIDFILE: SIGTERM, then SIGKILL after 10 s
    local name=$1 file=$2 pid
    [[ -s $file ]] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name ($pid) ignored SIGTERM; sending SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
        fi
        log "stopped $name ($pid)"
    fi
    rm -f "$file"
}

stop() {
    if [[ -f $CONF ]] && pid_alive "$DIR/slurmctld.pid"; then
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 50); do
                [[ -z $(squeue -h -t running,completing -o %i 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    stop_pid slurmd "$DIR/slurmd.pid"
    stop_pid slurmctld "$DIR/slurmctld.pid"
    stop_pid munged "$DIR/munged.pid"
    # State goes (with slurmd's /run/slurm/conf link to it); logs and the job completion log stay.
    if [[ $(readlink /run/slurm/conf 2>/dev/null) == "$DIR/spool/conf-cache" ]]; then
        rm -f /run/slurm/conf
        rmdir /run/slurm 2>/dev/null || true
    fi
    rm -rf "$DIR/state" "$DIR/spool" "$CONF"
}

status() {
    local rc=0
    for daemon in slurmctld slurmd; do
        if pid_alive "$DIR/$daemon.pid"; then
            echo "$daemon: running (pid $(cat "$DIR/$daemon.pid"))"
        else
            echo "$daemon: not running"
            rc=1
        fi
    done
    if munge_ok; then echo "munged: running"; else echo "munged: not running" && rc=1; fi
    if [[ $rc -eq 0 ]]; then
        echo "SLURM_CONF=$CONF"
        sinfo
        squeue
    fi
    return $rc
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 start|stop|status   (state under \$RVI_SLURM_DIR, default /tmp/rvi-slurm)" >&2
    exit 2
    ;;
esac
