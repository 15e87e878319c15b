#!/usr/bin/env bash
# ge-cluster.sh - a real multi-host Grid Engine cluster on ONE machine, for
# tests, CI and the demo: Son of Grid Engine 8.1.9 (Debian bookworm's
# gridengine-* packages) or, with GE_FLAVOR=ocs, Open Cluster Scheduler 9.1.4
# built from source (lab/ge-cluster-ocs.sh). Both can run at once.
#
#   ge-cluster.sh up            install + configure + start (idempotent)
#   ge-cluster.sh down          stop execds and qmaster (packages stay)
#   ge-cluster.sh down --purge  also purge packages, Grid Engine state and
#                               the marked /etc/hosts lines
#   ge-cluster.sh status        qmaster/execd processes, qhost, qstat -f
#   ge-cluster.sh env           print export lines: eval "$(ge-cluster.sh env)"
#   ge-cluster.sh hosts         print the exec host names, one per line
#   ge-cluster.sh build         only install (soge) or build and cache (ocs) the engine
#
# Layout: qmaster runs on this machine's own host name (admin + submit host,
# no execd). Each exec host is a loopback address named in /etc/hosts, served
# by its own sge_execd in its own UTS namespace, pinned to that address by
# the LD_PRELOAD shim lab/bindshim.c. Queue all.q spans exactly the exec
# hosts. Only 127.0.0.0/8 addresses are ever used.
#
# Environment knobs:
#   GE_FLAVOR  soge (default) or ocs
#   GE_HOSTS   "name:127.0.0.x ..."  (default "node1:127.0.0.11 node2:127.0.0.12 node3:127.0.0.13");
#              six hosts: add "node4:127.0.0.14 node5:127.0.0.15 node6:127.0.0.16". An 'up'
#              with fewer hosts stops and removes the exec hosts it no longer names.
#   GE_SLOTS   slots per exec host in all.q (default 4)
#   GE_LOAD_REPORT_TIME  global load_report_time (default 00:00:05)
#   GE_GID_BASE first gid of the per-host gid_range blocks (default 30000)
#   GE_WORK    scratch dir for generated config, logs, the built shim
#              (default /var/tmp/sge-image-kit-cluster[-ocs]; never the git tree)
#   GE_TIMEOUT seconds to wait for a daemon to come up (default 90)
# shellcheck disable=SC2015,SC2086  # "a && b || c" and word splitting are intended
set -euo pipefail

GE_HOSTS=${GE_HOSTS:-"node1:127.0.0.11 node2:127.0.0.12 node3:127.0.0.13"}
GE_SLOTS=${GE_SLOTS:-4}
GE_LOAD_REPORT_TIME=${GE_LOAD_REPORT_TIME:-00:00:05}
GE_GID_BASE=${GE_GID_BASE:-30000}
GE_FLAVOR=${GE_FLAVOR:-soge}
case "$GE_FLAVOR" in
  soge) GE_WORK=${GE_WORK:-/var/tmp/sge-image-kit-cluster} ;;
  ocs) GE_WORK=${GE_WORK:-/var/tmp/sge-image-kit-cluster-ocs} ;;
  *) echo "ge-cluster: ERROR: GE_FLAVOR must be soge or ocs, not '$GE_FLAVOR'" >&2; exit 2 ;;
esac
GE_TIMEOUT=${GE_TIMEOUT:-90}

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

QUEUE=all.q
PKGS="gridengine-master gridengine-exec gridengine-client"
COMMON=$SGE_ROOT/$SGE_CELL/common
SPOOL=/var/spool/gridengine
QSPOOL=$SPOOL/qmaster
ESPOOL=$SPOOL/execd
SPOOLDB=$SPOOL/spooldb
QMASTER_EXE=/usr/lib/gridengine/sge_qmaster
EXECD_EXE=/usr/lib/gridengine/sge_execd
SHEPHERD_EXE=/usr/lib/gridengine/sge_shepherd
QMASTER_CMD=/usr/sbin/sge_qmaster
EXECD_CMD=/usr/sbin/sge_execd
MARK="# sge-image-kit"
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHIM_SRC=$SCRIPT_DIR/bindshim.c
SHIM=$GE_WORK/bindshim.so
# Installed copy the daemons preload by bare name (see ensure_shim).
SHIM_NAME=libsge-image-kit-bindshim.so
SHIM_SYS=/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)/$SHIM_NAME
CONF=$GE_WORK/conf
LOGS=$GE_WORK/log
# Daemons start from a clean environment: jobs, prologs and load sensors
# inherit the execd's environment (execd_params INHERIT_ENV defaults true).
DAEMON_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root
            SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL")

T0=$EPOCHREALTIME
elapsed() { awk -v a="$EPOCHREALTIME" -v b="$T0" 'BEGIN{printf "%.1f", a-b}'; }
log() { printf '[ge-cluster %5ss] %s\n' "$(elapsed)" "$*" >&2; }
die() { printf 'ge-cluster: ERROR: %s\n' "$*" >&2; exit 1; }

# wait_for SECONDS CMD... : poll every 0.2 s
wait_for() {
  local end=$(( $(date +%s) + $1 )); shift
  while :; do
    "$@" >/dev/null 2>&1 && return 0
    [ "$(date +%s)" -ge "$end" ] && return 1
    sleep 0.2
  done
}

# is_proc PID EXE : PID is alive and runs EXE (pid files go stale after a kill -9)
is_proc() {
  [ -n "${1:-}" ] || return 1
  local exe; exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
  [ "$exe" = "$2" ] || [ "$exe" = "$2 (deleted)" ]
}
pidfile_pid() { cat "$1" 2>/dev/null || true; }
qmaster_pid() { local p; p=$(pidfile_pid "$QSPOOL/qmaster.pid"); is_proc "$p" "$QMASTER_EXE" && echo "$p" || true; }
execd_pid() { local p; p=$(pidfile_pid "$ESPOOL/$1/execd.pid"); is_proc "$p" "$EXECD_EXE" && echo "$p" || true; }
# qc ARGS... : qconf that prints only on failure (it reports successes on stderr)
qc() {
  local out
  out=$(qconf "$@" 2>&1) || { printf '%s\n' "$out" >&2; die "qconf $* failed"; }
}
qmaster_answers() { command -v qconf >/dev/null && timeout 10 qconf -sh >/dev/null 2>&1; }

setup_work() {
  mkdir -p "$GE_WORK" "$CONF" "$LOGS"
  : > "$GE_WORK/.ge-cluster-work"   # lets 'down --purge' know the dir is ours
}
# One 'up'/'down' at a time (parallel pytest workers all call 'up').
take_lock() { exec 9>"$GE_WORK/lock"; flock -w 1800 9 || die "could not lock $GE_WORK/lock"; }

# ----------------------------------------------------------------- hosts
H_NAMES=(); H_IPS=()
parse_hosts() {
  local spec h ip
  for spec in $GE_HOSTS; do
    h=${spec%%:*}; ip=${spec#*:}
    [ "$h" != "$spec" ] && [ -n "$h" ] && [ -n "$ip" ] || die "GE_HOSTS entry '$spec' is not name:ip"
    [[ $h =~ ^[A-Za-z][A-Za-z0-9-]*$ ]] || die "exec host name '$h' is not a plain host name"
    [[ $ip =~ ^127\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] || die "exec host address '$ip' is not in 127.0.0.0/8"
    [ "$ip" != 127.0.0.1 ] || die "127.0.0.1 is the qmaster's address; pick another for '$h'"
    case " ${H_NAMES[*]} " in *" $h "*) die "exec host '$h' listed twice";; esac
    case " ${H_IPS[*]} " in *" $ip "*) die "address $ip listed twice";; esac
    H_NAMES+=("$h"); H_IPS+=("$ip")
  done
  [ "${#H_NAMES[@]}" -gt 0 ] || die "GE_HOSTS is empty"
}

rev_name() { getent hosts "$1" 2>/dev/null | awk 'NR==1{print $2}'; }
fwd_ip() { getent ahostsv4 "$1" 2>/dev/null | awk 'NR==1{print $1}'; }

# rewrite /etc/hosts in place (in containers it is a bind mount: no rename)
write_etc_hosts() { [ "$(cat /etc/hosts)" = "$(cat "$1")" ] || cat "$1" > /etc/hosts; }

# The qmaster's host = this machine's host name. It must resolve to a
# loopback address (the only addresses this cluster may use).
HOST=""; HOST_IP=""
resolve_master() {
  HOST=$(hostname)
  [ -n "$HOST" ] || die "empty host name"
  case " ${H_NAMES[*]} " in *" $HOST "*) die "exec host names must differ from this machine's name '$HOST'";; esac
  HOST_IP=$(fwd_ip "$HOST")
  if [ -z "$HOST_IP" ]; then
    log "'$HOST' does not resolve: adding '127.0.1.1 $HOST' to /etc/hosts"
    local t; t=$(mktemp); cat /etc/hosts > "$t"; printf '127.0.1.1 %s %s\n' "$HOST" "$MARK" >> "$t"
    write_etc_hosts "$t"; rm -f "$t"
  elif [[ ! $HOST_IP =~ ^127\. ]]; then
    # Put a loopback line first so the qmaster never talks on a real interface.
    log "'$HOST' resolves to $HOST_IP (not loopback): prepending '127.0.1.1 $HOST' to /etc/hosts"
    local t; t=$(mktemp); { printf '127.0.1.1 %s %s\n' "$HOST" "$MARK"; cat /etc/hosts; } > "$t"
    write_etc_hosts "$t"; rm -f "$t"
  fi
  HOST_IP=$(fwd_ip "$HOST")
  [[ $HOST_IP =~ ^127\. ]] || die "'$HOST' still resolves to '$HOST_IP', not a loopback address"
  case " ${H_IPS[*]} " in *" $HOST_IP "*) die "$HOST_IP is the qmaster host's address; pick another exec host address";; esac
}

# /etc/hosts: one marked line per exec host; reverse lookup must give the name,
# because commlib compares the peer IP's reverse name with the claimed name.
ensure_etc_hosts() {
  local t i h ip
  t=$(mktemp)
  awk -v mark="$MARK" -v names=" ${H_NAMES[*]} " -v ips=" ${H_IPS[*]} " '
    index($0, mark) && (index(ips, " " $1 " ") || index(names, " " $2 " ")) { next }
    { print }' /etc/hosts > "$t"
  for i in "${!H_NAMES[@]}"; do printf '%s %s %s\n' "${H_IPS[$i]}" "${H_NAMES[$i]}" "$MARK" >> "$t"; done
  # compare sorted: lines already present in another order need no rewrite
  if [ "$(sort /etc/hosts)" != "$(sort "$t")" ]; then
    log "updating exec host lines in /etc/hosts"
    write_etc_hosts "$t"
  fi
  rm -f "$t"
  for i in "${!H_NAMES[@]}"; do
    h=${H_NAMES[$i]}; ip=${H_IPS[$i]}
    [ "$(fwd_ip "$h")" = "$ip" ] || die "'$h' resolves to '$(fwd_ip "$h")', not $ip (conflicting /etc/hosts line?)"
    [ "$(rev_name "$ip")" = "$h" ] || die "$ip reverse-resolves to '$(rev_name "$ip")', not $h (conflicting /etc/hosts line?)"
  done
}

# --------------------------------------------------------------- packages
# Maintainer scripts must not start or stop daemons: a packaged execd on
# 0.0.0.0:6445 would block the exec hosts, a qmaster started before the
# host_aliases fix rewrites act_qmaster to "localhost", and the init scripts
# stop by process name. Deny service actions unless a policy already exists.
no_service_starts() {
  local policy=/usr/sbin/policy-rc.d added=0 rc=0
  if [ ! -e $policy ]; then
    printf '#!/bin/sh\n%s\nexit 101\n' "$MARK" > $policy; chmod 755 $policy; added=1
  fi
  "$@" || rc=$?
  if [ $added = 1 ]; then rm -f $policy; fi
  return $rc
}

pkg_ok() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

ensure_packages() {
  local need="" p
  for p in $PKGS; do pkg_ok "$p" || need="$need $p"; done
  command -v gcc >/dev/null && [ -e /usr/include/stdio.h ] || need="$need gcc libc6-dev"
  [ -n "$need" ] || return 0
  log "installing:$need"
  apt-get update -qq -o DPkg::Lock::Timeout=900 > "$LOGS/apt-update.log" 2>&1 \
    || { tail -5 "$LOGS/apt-update.log" >&2; log "apt-get update failed; trying the install anyway"; }
  # shared/gridenginemaster has no default: unpreseeded, act_qmaster is empty.
  debconf-set-selections <<EOF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string $SGE_CELL
gridengine-common shared/gridenginemaster string $HOST
gridengine-master shared/gridengineconfig boolean true
gridengine-master shared/gridenginecell string $SGE_CELL
gridengine-master shared/gridenginemaster string $HOST
gridengine-exec shared/gridenginemaster string $HOST
gridengine-client shared/gridenginemaster string $HOST
EOF
  no_service_starts apt-get install -y -q -o DPkg::Lock::Timeout=900 -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold $need > "$LOGS/apt-install.log" 2>&1 \
    || { tail -30 "$LOGS/apt-install.log" >&2; die "apt-get install failed (log: $LOGS/apt-install.log)"; }
  for p in $PKGS; do pkg_ok "$p" || die "package $p did not install"; done
  log "packages installed"
}

ensure_shim() {
  [ -r "$SHIM_SRC" ] || die "missing $SHIM_SRC"
  if [ ! -e "$SHIM" ] || [ "$SHIM_SRC" -nt "$SHIM" ]; then
    log "building $SHIM"
    # build beside and rename: running daemons keep the old mapping intact
    gcc -shared -fPIC -O2 -Wall -o "$SHIM.tmp" "$SHIM_SRC" -ldl > "$LOGS/shim-build.log" 2>&1 \
      || { cat "$LOGS/shim-build.log" >&2; die "building the bind shim failed"; }
    mv -f "$SHIM.tmp" "$SHIM"
  fi
  # The shepherd runs with real and effective uid apart (root/sgeadmin): glibc's
  # secure-execution mode then drops LD_PRELOAD unless it names a set-user-ID library
  # in a standard directory. Without the shim there, builtin qrsh/qlogin connections
  # come from 127.0.0.1 and are refused (grid-engine-facts: interactive jobs).
  if ! cmp -s "$SHIM" "$SHIM_SYS" 2>/dev/null; then
    install -m 4755 "$SHIM" "$SHIM_SYS.tmp" && mv -f "$SHIM_SYS.tmp" "$SHIM_SYS"
  fi
  chmod 4755 "$SHIM_SYS"
}

# ------------------------------------------------------------ qmaster side
# The host name resolves to a loopback address whose reverse name is e.g.
# "localhost" (and clients on lo always connect from 127.0.0.1): commlib then
# refuses every client ("client IP resolved to host name localhost") and the
# qmaster renames itself. host_aliases must map those names onto the host
# name BEFORE the qmaster first starts. Returns 1 if the file changed.
ensure_host_aliases() {
  local aliases="" n f=$COMMON/host_aliases want cur
  for n in "$(rev_name "$HOST_IP")" "$(rev_name 127.0.0.1)"; do
    [ -n "$n" ] && [ "$n" != "$HOST" ] || continue
    case " $aliases " in *" $n "*) ;; *) aliases="$aliases $n";; esac
  done
  [ -n "$aliases" ] || return 0
  want="$HOST$aliases"
  cur=$(awk -v h="$HOST" '$1==h' "$f" 2>/dev/null || true)
  [ "$cur" = "$want" ] && return 0
  log "host_aliases: '$want'"
  mkdir -p "$COMMON"
  { awk -v h="$HOST" '$1!=h' "$f" 2>/dev/null || true; echo "$want"; } > "$f.new"
  mv -f "$f.new" "$f"; chown sgeadmin:sgeadmin "$f"; chmod 644 "$f"
  return 1
}

ensure_spool() {
  # gridengine-master's postinst runs init_cluster only on a fresh install
  # (not after remove-without-purge), so do it here when the spool is missing.
  [ -e "$SPOOLDB/sge" ] && return 0
  log "initialising the cluster spool"
  local d
  for d in "$QSPOOL" "$QSPOOL/job_scripts" "$SPOOLDB" "$ESPOOL" "$COMMON"; do
    mkdir -p "$d"; chown sgeadmin:sgeadmin "$d"
  done
  [ -e "$COMMON/bootstrap" ] || install -m0644 -o sgeadmin -g sgeadmin \
      /usr/share/gridengine/default-bootstrap "$COMMON/bootstrap"
  su -s /bin/sh -c "/usr/share/gridengine/scripts/init_cluster $SGE_ROOT $SGE_CELL $SPOOLDB sgeadmin" \
      sgeadmin > "$LOGS/init_cluster.log" 2>&1 \
    || { cat "$LOGS/init_cluster.log" >&2; die "init_cluster failed"; }
}

stop_pid() { # stop_pid PID EXE GRACE_SECONDS : TERM, wait, then KILL
  is_proc "$1" "$2" || return 0
  kill -TERM "$1" 2>/dev/null || true
  wait_for "$3" sh -c "! kill -0 $1" && return 0
  log "pid $1 ignored SIGTERM for $3 s: SIGKILL"
  is_proc "$1" "$2" && kill -KILL "$1" 2>/dev/null || true
  wait_for 5 sh -c "! kill -0 $1" || true
}

stop_qmaster() {
  local pid; pid=$(qmaster_pid)
  [ -n "$pid" ] || return 0
  # SIGTERM = controlled shutdown; measured ~9-10 s, so allow plenty
  log "stopping qmaster (pid $pid; a controlled shutdown takes ~10 s)"
  stop_pid "$pid" "$QMASTER_EXE" 40
}

start_qmaster() {
  local pid; pid=$(qmaster_pid)
  if [ -n "$pid" ]; then
    wait_for 30 qmaster_answers || die "qmaster pid $pid runs but does not answer (see $QSPOOL/messages)"
    return 0
  fi
  # the qmaster rewrites act_qmaster with the name it resolved for itself
  echo "$HOST" > "$COMMON/act_qmaster"; chown sgeadmin:sgeadmin "$COMMON/act_qmaster"
  log "starting sge_qmaster on $HOST ($HOST_IP)"
  # bound to the host's loopback address instead of 0.0.0.0: nothing listens
  # on a real interface
  "${DAEMON_ENV[@]}" GE_BIND_IP="$HOST_IP" LD_PRELOAD="$SHIM_NAME" "$QMASTER_CMD" \
      > "$LOGS/qmaster-start.log" 2>&1 || { cat "$LOGS/qmaster-start.log" >&2; die "sge_qmaster failed to start"; }
  wait_for "$GE_TIMEOUT" qmaster_answers \
    || { tail -20 "$QSPOOL/messages" >&2 2>/dev/null; die "qmaster did not answer within $GE_TIMEOUT s"; }
  [ "$(cat "$COMMON/act_qmaster")" = "$HOST" ] \
    || die "qmaster calls itself '$(cat "$COMMON/act_qmaster")', not '$HOST' (host_aliases?)"
  log "qmaster up (pid $(qmaster_pid))"
}

# qconf dumps fold long values with a trailing "\": one line per attribute,
# single spaces (so that comparing a dump with its edited copy is exact)
join_folded() {
  awk '{ line = line $0 } /\\$/ { sub(/[ \t]*\\$/, " ", line); next }
       { $0 = line; $1 = $1; print; line = "" }'
}

# set_conf_lines FILE KEY VALUE ... : replace "KEY  value" lines in a qconf dump
set_conf_lines() {
  local f=$1 v; shift
  while [ $# -ge 2 ]; do
    grep -qE "^$1[[:space:]]" "$f" || echo "$1 $2" >> "$f"
    v=$(printf '%s' "$2" | sed 's/[&|\\]/\\&/g')
    sed -i -E "s|^($1[[:space:]]+).*|\1$v|" "$f"
    shift 2
  done
}

ensure_global_config() {
  # min_uid/min_gid 1000 (default) fail root's jobs AND put the queue in E.
  # Must be set before execds start: a running execd picks changes up late.
  local rp
  qconf -sconf global | join_folded > "$CONF/global.cur"
  cp "$CONF/global.cur" "$CONF/global"
  # accounting_flush_time 0: qacct sees a finished job at once instead of
  # after flush_time (15 s by default)
  rp=$(awk '$1=="reporting_params"{$1=""; print}' "$CONF/global.cur" | sed -E 's/accounting_flush_time=[^ ]*//' | xargs)
  set_conf_lines "$CONF/global" min_uid 0 min_gid 0 load_report_time "$GE_LOAD_REPORT_TIME" \
      reporting_params "$rp accounting_flush_time=00:00:00"
  if ! cmp -s "$CONF/global" "$CONF/global.cur"; then
    log "global config: min_uid 0, min_gid 0, load_report_time $GE_LOAD_REPORT_TIME, accounting_flush_time 0"
    # -Mconf modifies the configuration named like the FILE ("global")
    qc -Mconf "$CONF/global"
  fi
  # The package default (schedule_interval 15 s, no flush) makes the first
  # job wait ~27 s; these settings bring it to about 1 s.
  qconf -ssconf | join_folded > "$CONF/sched.cur"
  cp "$CONF/sched.cur" "$CONF/sched"
  set_conf_lines "$CONF/sched" schedule_interval 0:0:1 flush_submit_sec 1 flush_finish_sec 1
  if ! cmp -s "$CONF/sched" "$CONF/sched.cur"; then
    log "scheduler: schedule_interval 0:0:1, flush_submit_sec 1, flush_finish_sec 1"
    qc -Msconf "$CONF/sched"
  fi
}

in_list() { local x=$1; shift; printf '%s\n' "$@" | grep -qxF -- "$x"; }

ensure_hosts_config() {
  local adm sub exl i h lo hi cur
  adm=$(qconf -sh 2>/dev/null || true)
  sub=$(qconf -ss 2>/dev/null || true)
  exl=$(qconf -sel 2>/dev/null || true)
  in_list "$HOST" $adm || qc -ah "$HOST"
  in_list "$HOST" $sub || qc -as "$HOST"
  for i in "${!H_NAMES[@]}"; do
    h=${H_NAMES[$i]}
    in_list "$h" $adm || qc -ah "$h"
    if ! in_list "$h" $exl; then
      printf '%s\n' "hostname $h" "load_scaling NONE" "complex_values NONE" "user_lists NONE" \
        "xuser_lists NONE" "projects NONE" "xprojects NONE" "usage_scaling NONE" \
        "report_variables NONE" > "$CONF/exechost_$h"
      qc -Ae "$CONF/exechost_$h"
    fi
    # Host-local config with its own gid_range, BEFORE the execd starts (a
    # running execd ignores a host config added later). Several execds on one
    # kernel must never hand out the same job gid. load_sensor stays unset:
    # the kit's installer sets it. Other lines are preserved on re-runs.
    lo=$(( GE_GID_BASE + i * 1000 )); hi=$(( lo + 999 ))
    mkdir -p "$CONF/host"
    if qconf -sconf "$h" 2>/dev/null | join_folded > "$CONF/host/$h.cur" && [ -s "$CONF/host/$h.cur" ]; then
      cur=$(awk '$1=="gid_range"{print $2}' "$CONF/host/$h.cur")
      if [ "$cur" != "$lo-$hi" ]; then
        grep -v '^#' "$CONF/host/$h.cur" > "$CONF/host/$h"
        set_conf_lines "$CONF/host/$h" gid_range "$lo-$hi"
        qc -Mconf "$CONF/host/$h"
      fi
    else
      echo "gid_range $lo-$hi" > "$CONF/host/$h"
      qc -Aconf "$CONF/host/$h"
    fi
  done
}

# Exec hosts of an earlier, larger GE_HOSTS (a six-host run) that this GE_HOSTS
# no longer names: stop their execds and drop them from the cluster, so that an
# 'up' with the default hosts gives back exactly the default cluster (else the
# extra execds keep reporting load and qhost still lists them). Only hosts of
# our own marked /etc/hosts lines: a host this script did not add stays.
prune_exec_hosts() {
  local h pid
  for h in $(qconf -sel 2>/dev/null || true); do
    in_list "$h" "${H_NAMES[@]}" && continue
    grep -F "$MARK" /etc/hosts | awk '{print $2}' | grep -qxF -- "$h" || continue
    log "exec host $h is not in GE_HOSTS: stopping its execd and removing it"
    pid=$(execd_pid "$h")
    timeout 15 qconf -kej "$h" > /dev/null 2>&1 || true
    [ -z "$pid" ] || wait_for 20 sh -c "! kill -0 $pid" || stop_pid "$pid" "$EXECD_EXE" 10
    qconf -de "$h" > /dev/null 2>&1 || log "could not remove exec host $h: $(qconf -de "$h" 2>&1)"
    qconf -dconf "$h" > /dev/null 2>&1 || true
    qconf -dh "$h" > /dev/null 2>&1 || true
  done
}

# q_attr NAME : value of a queue attribute (qconf -sq folds long lines with "\")
q_attr() {
  qconf -sq "$QUEUE" | awk -v k="$1" '
    { line = line $0 }
    /\\$/ { sub(/\\$/, "", line); next }
    { split(line, f, " "); if (f[1] == k) { sub("^[^ \t]+[ \t]+", "", line); print line } line = "" }'
}

ensure_queue() {
  local want_hosts cur_hosts
  if ! qconf -sql 2>/dev/null | grep -qxF "$QUEUE"; then
    log "creating queue $QUEUE on ${H_NAMES[*]} ($GE_SLOTS slots each)"
    # -Aq needs every attribute ('required attribute "seq_no" is missing'),
    # and the stock template's pe_list names PEs that do not exist.
    cat > "$CONF/$QUEUE" <<EOF
qname                 $QUEUE
hostlist              ${H_NAMES[*]}
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               NONE
rerun                 FALSE
slots                 $GE_SLOTS
tmpdir                /tmp
shell                 /bin/sh
prolog                NONE
epilog                NONE
shell_start_mode      posix_compliant
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                00:00:60
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
    qc -Aq "$CONF/$QUEUE"
  fi
  # A queue just created goes through the checks below too: its per-host tmpdirs were
  # once set only by a second 'up', so a test that ran 'up' changed all.q under the
  # snapshot its module took after the first.
  want_hosts=$(printf '%s\n' "${H_NAMES[@]}" | sort | xargs)
  cur_hosts=$(q_attr hostlist | tr ' ,' '\n' | grep -v '^$' | sort | xargs)
  if [ "$cur_hosts" != "$want_hosts" ]; then
    log "$QUEUE hostlist: '$cur_hosts' -> '$want_hosts'"
    local gone
    for gone in $cur_hosts; do  # a host leaving takes its tmpdir (below) with it
      case " $want_hosts " in *" $gone "*) ;; *) qconf -purge queue tmpdir "$QUEUE@$gone" >/dev/null 2>&1 || true ;; esac
    done
    qc -rattr queue hostlist "${H_NAMES[*]}" "$QUEUE"
  fi
  if [ "$(q_attr slots | xargs)" != "$GE_SLOTS" ]; then
    log "$QUEUE slots: '$(q_attr slots | xargs)' -> $GE_SLOTS"
    qc -rattr queue slots "$GE_SLOTS" "$QUEUE"
  fi
  # Each exec host its own tmpdir. The lab's execds share one /tmp, and a job's TMPDIR
  # (tmpdir/JOB.TASK.QUEUE) has the same name on every host of a parallel job, so the
  # first host to finish its part removed the others' (a `qrsh -inherit` task failed:
  # "qrsh_starter: cannot write pid file TMPDIR/pid.1.node2"). Real exec
  # hosts each have their own /tmp.
  local h d
  for h in "${H_NAMES[@]}"; do
    d="$GE_WORK/tmp/$h"
    install -d -m 1777 "$d"
    case "$(q_attr tmpdir)" in
      *"[$h=$d]"*) ;;
      *) qc -mattr queue tmpdir "$d" "$QUEUE@$h" ;;
    esac
  done
}

# ---------------------------------------------------------------- execds
ensure_fuse() {
  # Containerised jobs run as their owners, and Charliecloud's ch-run mounts SquashFS
  # images through FUSE without privileges: /dev/fuse must be usable by every user, as
  # on a normal Debian host (0666), where some sandboxes leave it 0600.
  [ -c /dev/fuse ] || return 0
  [ "$(stat -c %a /dev/fuse)" = 666 ] || chmod 0666 /dev/fuse
}

check_unshare() {
  unshare --uts true 2>/dev/null \
    || die "'unshare --uts' is not permitted here; each exec host needs its own UTS namespace (a container needs CAP_SYS_ADMIN)"
}

start_execd() { # start_execd NAME IP
  local h=$1 ip=$2
  log "starting sge_execd for $h on $ip"
  # own UTS namespace: gethostname() in execd, shepherds and jobs says $h;
  # the shim binds its sockets to $ip (execd listen port 6445 and the source
  # address of its connections, which the qmaster reverse-resolves).
  # shellcheck disable=SC2016  # expanded by the inner sh
  "${DAEMON_ENV[@]}" unshare --uts /bin/sh -c \
      'hostname "$1" && GE_BIND_IP="$2" LD_PRELOAD="$3" exec "$4"' \
      sh "$h" "$ip" "$SHIM_NAME" "$EXECD_CMD" > "$LOGS/execd-$h.log" 2>&1 \
    || { cat "$LOGS/execd-$h.log" >&2; die "sge_execd for $h failed to start"; }
}

execd_port() { getent services sge_execd | awk '{split($2, a, "/"); print a[1]}'; }

# hosts (among the arguments) that are not ready: no load report at the
# qmaster, or (hosts in $FRESH) the execd does not answer qping yet - after a
# kill -9 the qmaster still shows the dead execd's last load values.
FRESH=" "
hosts_not_ready() {
  local h port
  port=$(execd_port)
  for h in $(qhost 2>/dev/null | awk -v want=" $* " '
      NR > 3 && index(want, " " $1 " ") && $7 != "-" { ok[$1] = 1 }
      END { n = split(want, w, " "); for (i = 1; i <= n; i++) if (!(w[i] in ok)) print w[i] }'); do
    printf '%s ' "$h"
  done
  for h in $FRESH; do
    timeout 5 qping -info "$h" "${port:-6445}" execd 1 > /dev/null 2>&1 || printf '%s ' "$h"
  done
}

# listens PID IP PORT : PID owns a listening TCP socket on IP:PORT
listens() {
  local hex inodes
  hex=$(echo "$2" | awk -F. -v p="$3" '{ printf "%02X%02X%02X%02X:%04X", $4, $3, $2, $1, p }')
  inodes=$(find "/proc/$1/fd" -maxdepth 1 -lname 'socket:*' -printf '%l\n' 2>/dev/null | tr -dc '0-9\n')
  [ -n "$inodes" ] || return 1
  awk -v a="$hex" '$2 == a && $4 == "0A" { print $10 }' /proc/net/tcp | grep -qxF "$inodes"
}

ensure_execds() {
  local i h pid missing end bg=() port
  port=$(execd_port)
  for i in "${!H_NAMES[@]}"; do
    h=${H_NAMES[$i]}
    pid=$(execd_pid "$h")
    if [ -n "$pid" ] && ! listens "$pid" "${H_IPS[$i]}" "${port:-6445}"; then
      # e.g. GE_HOSTS gave the host a new address since it was started
      log "execd $h (pid $pid) does not listen on ${H_IPS[$i]}: restarting it"
      # shut down through the qmaster so it drops the old endpoint; otherwise
      # the new execd was seen refused ("endpoint node3/execd/1 is not
      # unique") and shutting itself down seconds after it started
      timeout 15 qconf -ke "$h" > /dev/null 2>&1 || true
      wait_for 20 sh -c "! kill -0 $pid" || stop_pid "$pid" "$EXECD_EXE" 20
      pid=""
    fi
    [ -n "$pid" ] && continue
    # in parallel: each sge_execd takes ~1 s to daemonise
    start_execd "$h" "${H_IPS[$i]}" & bg+=($!)
    FRESH="$FRESH$h "
  done
  for pid in "${bg[@]}"; do wait "$pid" || die "an execd failed to start"; done
  end=$(( $(date +%s) + GE_TIMEOUT ))
  while missing=$(hosts_not_ready "${H_NAMES[@]}"); [ -n "$missing" ]; do
    if [ "$(date +%s)" -ge "$end" ]; then
      for h in $missing; do
        echo "--- $h: execd pid '$(execd_pid "$h")', last messages:" >&2
        tail -5 "$ESPOOL/$h/messages" >&2 2>/dev/null || true
      done
      tail -5 /tmp/execd_messages.* >&2 2>/dev/null || true
      die "no load report within $GE_TIMEOUT s from: $missing"
    fi
    sleep 0.2
  done
  [ ${#bg[@]} = 0 ] || log "all exec hosts report load"
}

# ------------------------------------------------------------ subcommands
cmd_up() {
  setup_work; take_lock
  parse_hosts
  resolve_master
  ensure_etc_hosts
  ensure_packages
  ensure_shim
  check_unshare
  ensure_fuse
  if ! ensure_host_aliases && [ -n "$(qmaster_pid)" ]; then
    # the qmaster reads host_aliases only at start
    stop_qmaster
  fi
  ensure_spool
  start_qmaster
  ensure_global_config
  ensure_hosts_config
  ensure_queue
  prune_exec_hosts
  ensure_execds
  # a job failure (e.g. before min_uid was fixed) leaves instances in E
  qmod -c "$QUEUE" > /dev/null 2>&1 || true
  summary
}

summary() {
  local i h
  echo "Grid Engine cluster up in $(elapsed) s: qmaster $HOST (pid $(qmaster_pid)), queue $QUEUE, SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL"
  for i in "${!H_NAMES[@]}"; do
    h=${H_NAMES[$i]}
    printf '  exec host %-12s %-15s slots %-3s execd pid %s\n' "$h" "${H_IPS[$i]}" "$GE_SLOTS" "$(execd_pid "$h")"
  done
  local flavor=""
  [ "$GE_FLAVOR" = soge ] || flavor="GE_FLAVOR=$GE_FLAVOR "
  echo "  use it: eval \"\$(${flavor}$SCRIPT_DIR/ge-cluster.sh env)\"; qsub -b y -l hostname=${H_NAMES[0]} hostname"
}

kill_orphan_shepherds() {
  # Shepherds (and their jobs) outlive an execd that was killed hard.
  local p pid ppid c pg
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    is_proc "$pid" "$SHEPHERD_EXE" || continue
    ppid=$(awk '{print $4}' "$p/stat" 2>/dev/null || true)
    is_proc "$ppid" "$EXECD_EXE" && continue
    log "killing orphan shepherd $pid and its job"
    for c in /proc/[0-9]*; do
      [ "$(awk '{print $4}' "$c/stat" 2>/dev/null)" = "$pid" ] || continue
      pg=$(awk '{print $5}' "$c/stat" 2>/dev/null || true)
      # the job runs in its own process group, led by the shepherd's child
      if [ -n "$pg" ] && [ "$pg" = "${c#/proc/}" ]; then kill -KILL -- "-$pg" 2>/dev/null || true
      else kill -KILL "${c#/proc/}" 2>/dev/null || true; fi
    done
    is_proc "$pid" "$SHEPHERD_EXE" && kill -KILL "$pid" 2>/dev/null || true
  done
}

# stop_daemons : every execd (and its jobs), orphaned shepherds, then qmaster; both
# engines' `down` use it
stop_daemons() {
  local f pid h pids="" names=""
  # execd deletes its pid file on exit: collect PIDs before stopping
  for f in "$ESPOOL"/*/execd.pid; do
    [ -r "$f" ] || continue
    pid=$(pidfile_pid "$f"); h=$(basename "$(dirname "$f")")
    is_proc "$pid" "$EXECD_EXE" || continue
    pids="$pids $pid"; names="$names $h"
  done
  if [ -n "$pids" ]; then
    log "stopping execds:$names"
    if qmaster_answers; then
      # -kej: stop the execd AND the jobs running there
      for h in $names; do timeout 15 qconf -kej "$h" > /dev/null 2>&1 || true; done
    fi
    for pid in $pids; do
      wait_for 20 sh -c "! kill -0 $pid" || stop_pid "$pid" "$EXECD_EXE" 10
    done
  fi
  kill_orphan_shepherds
  stop_qmaster
}

cmd_down() {
  local purge=0
  case "${1:-}" in --purge) purge=1;; "") ;; *) die "usage: $0 down [--purge]";; esac
  setup_work; take_lock
  stop_daemons
  if [ $purge = 1 ]; then
    rm -f "$SHIM_SYS"
    log "purging packages and Grid Engine state"
    no_service_starts apt-get purge -y -q -o DPkg::Lock::Timeout=900 $PKGS gridengine-common \
        > "$LOGS/apt-purge.log" 2>&1 || { tail -20 "$LOGS/apt-purge.log" >&2; die "apt-get purge failed"; }
    rm -rf "$SGE_ROOT" "$SPOOL" /var/run/gridengine /tmp/execd_messages.* /tmp/qmaster_messages.*
    if pgrep -x sge_qmaster >/dev/null 2>&1; then
      # The other engine's cluster still runs on the same exec host names and shim.
      log "another Grid Engine still runs here: the '$MARK' lines in /etc/hosts stay"
    elif grep -qF "$MARK" /etc/hosts; then
      local t; t=$(mktemp); grep -vF "$MARK" /etc/hosts > "$t" || true
      write_etc_hosts "$t"; rm -f "$t"
      log "removed the '$MARK' lines from /etc/hosts"
    fi
    exec 9>&-
    [ -e "$GE_WORK/.ge-cluster-work" ] && rm -rf "$GE_WORK"
  fi
  log "down"
}

cmd_status() {
  local pid h rc=0
  parse_hosts
  pid=$(qmaster_pid)
  if [ -n "$pid" ]; then echo "qmaster: pid $pid"; else echo "qmaster: not running"; rc=1; fi
  for h in "${H_NAMES[@]}"; do
    pid=$(execd_pid "$h")
    if [ -n "$pid" ]; then echo "execd $h: pid $pid"; else echo "execd $h: not running"; rc=1; fi
  done
  if qmaster_answers; then
    echo; qhost || true
    echo; qstat -f -u '*' || true
  fi
  return $rc
}

cmd_env() {
  echo "export SGE_ROOT=$SGE_ROOT"
  echo "export SGE_CELL=$SGE_CELL"
}

cmd_hosts() { parse_hosts; printf '%s\n' "${H_NAMES[@]}"; }

cmd_build() { setup_work; take_lock; parse_hosts; resolve_master; ensure_packages; }

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

# The other engine redefines what differs (paths, build, cell setup, env).
[ "$GE_FLAVOR" = soge ] || . "$SCRIPT_DIR/ge-cluster-$GE_FLAVOR.sh"

[ "$(id -u)" = 0 ] || case "${1:-}" in env|hosts|status|""|-h|--help|help) ;; *) die "must run as root";; esac
case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  env) cmd_env ;;
  hosts) cmd_hosts ;;
  build) cmd_build ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
