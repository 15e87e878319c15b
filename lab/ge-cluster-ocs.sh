# shellcheck shell=bash
# ge-cluster-ocs.sh - the Open Cluster Scheduler (OCS) 9.1.4 flavour of
# ge-cluster.sh, sourced by it when GE_FLAVOR=ocs; it redefines what differs
# from Son of Grid Engine. Same commands, same exec hosts (the loopback
# aliases and UTS namespaces), its own ports, SGE_ROOT, spool and work dir, so
# it runs beside a Son of Grid Engine cluster.
#
#  - Built from the source tarball and its gcc 12 patch in $OCS_SRC (default
#    ../shared/ocs beside the repository), in a scratch dir, installed into
#    $OCS_HOME/<version>-<key>, where key hashes the tarball, the patch and
#    the build options: a second 'up' reuses the tree; a changed source or
#    patch builds a new one.
#  - The cell lives inside that tree ($SGE_ROOT/default, spool included).
#    OCS's inst_sge refuses a host name that resolves to 127.x, so the cell is
#    set up the way inst_sge does it internally, without it: bootstrap file,
#    spoolinit, spooldefaults, act_qmaster and host_aliases.
#  - Ports 6544 (qmaster) and 6545 (execd) via SGE_QMASTER_PORT and
#    SGE_EXECD_PORT, which 'env' prints; nothing is added to /etc/services.
#
# Knobs: OCS_SRC, OCS_HOME (default /var/lib/sge-image-kit-ocs),
#   OCS_BUILD_DIR (scratch, default /var/tmp/sge-image-kit-ocs-build),
#   OCS_MAKE_JOBS (default 2), OCS_QMASTER_PORT (6544), OCS_EXECD_PORT (6545).

OCS_SRC=${OCS_SRC:-$(cd "$SCRIPT_DIR/.." && pwd)/../shared/ocs}
OCS_HOME=${OCS_HOME:-/var/lib/sge-image-kit-ocs}
OCS_BUILD_DIR=${OCS_BUILD_DIR:-/var/tmp/sge-image-kit-ocs-build}
OCS_MAKE_JOBS=${OCS_MAKE_JOBS:-2}
OCS_QMASTER_PORT=${OCS_QMASTER_PORT:-6544}
OCS_EXECD_PORT=${OCS_EXECD_PORT:-6545}
OCS_VERSION=9.1.4
OCS_TARBALL=clusterscheduler-$OCS_VERSION.tar.gz
OCS_PATCHES="gcc12-cstddef.patch"
OCS_BUILD_DEPS="build-essential cmake autoconf automake flex bison patchelf libdb5.3-dev libhwloc-dev
  hwloc libjemalloc-dev libtirpc-dev libudev-dev libssl-dev libncurses-dev libpam0g-dev rapidjson-dev git"
# Part of the cache key: a change here builds a new tree.
OCS_CMAKE_OPTS="-DCMAKE_BUILD_TYPE=Release -DWITH_OS_3RDPARTY=ON -DWITH_JNI=OFF -DWITH_QMAKE=ON
  -DWITH_MUNGE=OFF -DENABLE_LTO=OFF -DINSTALL_SGE_TEST=OFF -DINSTALL_SGE_DOC=OFF -DINSTALL_SGE_SRCDOC=OFF"
GE_ADMIN=sgeadmin

# ocs_key: hash of tarball + patches + build options (no tarball: "nosrc")
ocs_key() {
  local f
  [ -r "$OCS_SRC/$OCS_TARBALL" ] || { echo nosrc; return 0; }
  {
    for f in "$OCS_TARBALL" $OCS_PATCHES; do sha256sum < "$OCS_SRC/$f"; done
    echo "$OCS_CMAKE_OPTS"
  } | sha256sum | cut -c1-12
}

export SGE_ROOT="$OCS_HOME/$OCS_VERSION-$(ocs_key)" SGE_CELL=default
export SGE_QMASTER_PORT=$OCS_QMASTER_PORT SGE_EXECD_PORT=$OCS_EXECD_PORT
OCS_BIN=$SGE_ROOT/bin/lx-amd64
OCS_UTILBIN=$SGE_ROOT/utilbin/lx-amd64
OCS_STAMP=$SGE_ROOT/.sge-image-kit-built
export PATH=$OCS_BIN:$PATH
COMMON=$SGE_ROOT/$SGE_CELL/common
SPOOL=$SGE_ROOT/$SGE_CELL/spool
QSPOOL=$SPOOL/qmaster
ESPOOL=$SPOOL            # execd_spool_dir: one sub-directory per exec host
QMASTER_EXE=$OCS_BIN/sge_qmaster
EXECD_EXE=$OCS_BIN/sge_execd
SHEPHERD_EXE=$OCS_BIN/sge_shepherd
QMASTER_CMD=$QMASTER_EXE
EXECD_CMD=$EXECD_EXE
# OCS's commands first on the PATH jobs inherit (qrsh -inherit, qsub from a job)
DAEMON_ENV=(env -i PATH="$OCS_BIN":/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root
            SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL"
            SGE_QMASTER_PORT="$SGE_QMASTER_PORT" SGE_EXECD_PORT="$SGE_EXECD_PORT")

execd_port() { echo "$SGE_EXECD_PORT"; }

# -------------------------------------------------------- build and cache
ensure_admin_user() {
  id "$GE_ADMIN" > /dev/null 2>&1 && return 0
  log "creating the system user $GE_ADMIN"
  # as Debian's gridengine-common creates it, so installing that later is fine
  if command -v adduser > /dev/null; then
    adduser --system --group --quiet --home /var/lib/gridengine --no-create-home "$GE_ADMIN"
  else
    useradd --system --user-group --home-dir /var/lib/gridengine --no-create-home \
      --shell /usr/sbin/nologin "$GE_ADMIN"
  fi || die "could not create user $GE_ADMIN"
}

ensure_build_deps() {
  local need="" p
  for p in $OCS_BUILD_DEPS; do pkg_ok "$p" || need="$need $p"; done
  [ -n "$need" ] || return 0
  log "installing:$need"
  apt-get update -qq -o DPkg::Lock::Timeout=900 > "$LOGS/apt-update.log" 2>&1 \
    || { tail -5 "$LOGS/apt-update.log" >&2; log "apt-get update failed; trying the install anyway"; }
  apt-get install -y -q -o DPkg::Lock::Timeout=900 $need > "$LOGS/apt-install.log" 2>&1 \
    || { tail -30 "$LOGS/apt-install.log" >&2; die "apt-get install failed (log: $LOGS/apt-install.log)"; }
}

# Build and install OCS into $SGE_ROOT unless that tree is complete already.
ensure_ocs_build() {
  local f b=$OCS_BUILD_DIR t
  if [ -e "$OCS_STAMP" ]; then
    ensure_build_deps   # the runtime libraries come with the -dev packages
    return 0
  fi
  for f in "$OCS_TARBALL" $OCS_PATCHES; do
    [ -r "$OCS_SRC/$f" ] || die "missing $OCS_SRC/$f (set OCS_SRC to the directory holding the OCS source)"
  done
  ensure_build_deps
  log "building OCS $OCS_VERSION into $SGE_ROOT (nice, make -j$OCS_MAKE_JOBS: several minutes; log $LOGS/ocs-build.log)"
  t=$EPOCHREALTIME
  # a half-built tree from an interrupted run is not trusted
  rm -rf "$SGE_ROOT" "$b"
  mkdir -p "$b/3rdparty" "$OCS_HOME"
  # the tree must be called clusterscheduler/ (its CMakeLists refer to it)
  tar -xzf "$OCS_SRC/$OCS_TARBALL" -C "$b"
  [ -d "$b/clusterscheduler" ] || die "$OCS_TARBALL did not unpack into clusterscheduler/"
  for f in $OCS_PATCHES; do
    (cd "$b" && patch -p0 --forward -s < "$OCS_SRC/$f") || die "patch $f failed"
  done
  {
    # shellcheck disable=SC2086  # option list
    cmake -S "$b/clusterscheduler" -B "$b/build" $OCS_CMAKE_OPTS -DCMAKE_INSTALL_PREFIX="$SGE_ROOT" \
        -DPROJECT_3RDPARTY_HOME="$b/3rdparty" \
      && nice -n 19 make -C "$b/build" -j"$OCS_MAKE_JOBS" \
      && make -C "$b/build" install
  } > "$LOGS/ocs-build.log" 2>&1 \
    || { tail -40 "$LOGS/ocs-build.log" >&2; die "OCS build failed (log: $LOGS/ocs-build.log)"; }
  [ -x "$QMASTER_EXE" ] && [ -x "$EXECD_EXE" ] && [ -x "$OCS_BIN/qconf" ] \
    || die "OCS installed no daemons under $OCS_BIN"
  awk -v a="$EPOCHREALTIME" -v b="$t" 'BEGIN{printf "%.0f\n", a-b}' > "$SGE_ROOT/.build-seconds"
  touch "$OCS_STAMP"
  rm -rf "$b"
  log "OCS built in $(cat "$SGE_ROOT/.build-seconds") s ($(du -sm "$SGE_ROOT" | cut -f1) MB installed)"
}

# A tree built from an older source or patch: stop its daemons (they hold the
# same ports) and remove it.
retire_other_trees() {
  local d f pid
  for d in "$OCS_HOME"/*/; do
    d=${d%/}
    [ -d "$d" ] && [ "$d" != "$SGE_ROOT" ] && [ -x "$d/bin/lx-amd64/sge_qmaster" ] || continue
    for f in "$d"/default/spool/*/execd.pid; do
      pid=$(pidfile_pid "$f")
      is_proc "$pid" "$d/bin/lx-amd64/sge_execd" || continue
      log "stopping execd pid $pid of the older OCS tree $d"
      stop_pid "$pid" "$d/bin/lx-amd64/sge_execd" 20
    done
    pid=$(pidfile_pid "$d/default/spool/qmaster/qmaster.pid")
    if is_proc "$pid" "$d/bin/lx-amd64/sge_qmaster"; then
      log "stopping qmaster pid $pid of the older OCS tree $d"
      stop_pid "$pid" "$d/bin/lx-amd64/sge_qmaster" 40
    fi
    log "removing the older OCS tree $d"
    rm -rf "$d"
  done
}

ensure_packages() {
  ensure_admin_user
  ensure_ocs_build
  retire_other_trees
  command -v gcc >/dev/null || die "gcc missing (needed for the bind shim)"
}

cmd_build() {
  setup_work; take_lock
  ensure_admin_user
  ensure_ocs_build
  local t; t=$(cat "$SGE_ROOT/.build-seconds" 2>/dev/null || true)
  echo "OCS $OCS_VERSION ready in $SGE_ROOT (${t:+built in $t s; }$(elapsed) s now)"
}

# ------------------------------------------------------------- the cell
# What inst_sge -m does for a qmaster, minus its host name checks, the rc
# scripts and the daemon start: classic (flat file) spooling.
ensure_spool() {
  [ -e "$SPOOL/.initialised" ] && [ -e "$COMMON/bootstrap" ] && return 0
  log "initialising the OCS cell $SGE_ROOT/$SGE_CELL"
  local d tmp
  rm -rf "${SPOOL:?}" "$COMMON/bootstrap" "$COMMON/act_qmaster"
  for d in "$SGE_ROOT/$SGE_CELL" "$COMMON" "$SPOOL" "$QSPOOL" "$QSPOOL/job_scripts"; do
    mkdir -p "$d"; chown "$GE_ADMIN:$GE_ADMIN" "$d"; chmod 755 "$d"
  done
  cat > "$COMMON/bootstrap" <<EOF
# Version: $OCS_VERSION
#
admin_user              $GE_ADMIN
default_domain          none
ignore_fqdn             true
spooling_method         classic
spooling_lib            libspoolc
spooling_params         $COMMON;$QSPOOL
binary_path             $SGE_ROOT/bin
qmaster_spool_dir       $QSPOOL
security_mode           none
listener_threads        2
worker_threads          2
reader_threads          2
scheduler_threads       1
EOF
  chown "$GE_ADMIN:$GE_ADMIN" "$COMMON/bootstrap"; chmod 644 "$COMMON/bootstrap"
  tmp=$CONF/ocs-init; rm -rf "$tmp"; mkdir -p "$tmp"
  cat > "$tmp/configuration" <<EOF
conf_version           0
execd_spool_dir        $SPOOL
mailer                 /bin/mail
xterm                  /usr/bin/xterm
load_sensor            none
prolog                 none
epilog                 none
shell_start_mode       posix_compliant
login_shells           sh,bash,ksh,csh,tcsh
min_uid                0
min_gid                0
user_lists             none
xuser_lists            none
projects               none
xprojects              none
enforce_project        false
enforce_user           auto
load_report_time       $GE_LOAD_REPORT_TIME
max_unheard            00:05:00
reschedule_unknown     00:00:00
loglevel               log_warning
administrator_mail     none
set_token_cmd          none
pag_cmd                none
token_extend_time      none
shepherd_cmd           none
qmaster_params         none
execd_params           none
reporting_params       accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00
finished_jobs          100
gid_range              20000-20100
qlogin_command         builtin
qlogin_daemon          builtin
rlogin_command         builtin
rlogin_daemon          builtin
rsh_command            builtin
rsh_daemon             builtin
max_aj_instances       2000
max_aj_tasks           75000
max_u_jobs             0
max_jobs               0
max_advance_reservations 0
auto_user_oticket      0
auto_user_fshare       0
auto_user_default_project none
auto_user_delete_time  86400
delegated_file_staging false
jsv_url                none
EOF
  chmod 644 "$tmp/configuration"; chown -R "$GE_ADMIN" "$tmp"
  for f in sge_aliases qtask sge_request; do
    install -m 644 -o "$GE_ADMIN" -g "$GE_ADMIN" "$SGE_ROOT/util/$f" "$COMMON/$f"
  done
  # shellcheck disable=SC2016  # expanded by the inner sh
  su -s /bin/sh "$GE_ADMIN" -c '
    set -e
    u=$SGE_ROOT/utilbin/lx-amd64; r=$SGE_ROOT/util/resources
    $u/spoolinit classic libspoolc "$1" init
    $u/spooldefaults configuration "$2"
    $u/spooldefaults complexes $r/centry
    $u/spooldefaults pes $r/pe
    $u/spooldefaults usersets $r/usersets
    $u/spooldefaults managers root "$3"
    $u/spooldefaults operators "$3"' sh "$COMMON;$QSPOOL" "$tmp/configuration" "$GE_ADMIN" \
      > "$LOGS/ocs-init.log" 2>&1 \
    || { cat "$LOGS/ocs-init.log" >&2; die "initialising the OCS spool failed"; }
  touch "$SPOOL/.initialised"
}

# --------------------------------------------------------------- teardown
cmd_down_ocs_purge() {
  log "removing the OCS cell (spool, configuration) and $GE_WORK; the built tree stays in $SGE_ROOT"
  rm -rf "${SGE_ROOT:?}/${SGE_CELL:?}" /tmp/execd_messages.* /tmp/qmaster_messages.*
  # the installed shim and the /etc/hosts lines are shared with a Son of Grid
  # Engine cluster
  pkg_ok gridengine-master || rm -f "$SHIM_SYS"
  if ! pkg_ok gridengine-master && grep -qF "$MARK" /etc/hosts; then
    local t; t=$(mktemp); grep -vF "$MARK" /etc/hosts > "$t" || true
    write_etc_hosts "$t"; rm -f "$t"
    log "removed the '$MARK' lines from /etc/hosts"
  fi
  exec 9>&-
  [ -e "$GE_WORK/.ge-cluster-work" ] && rm -rf "$GE_WORK"
}

cmd_down() {
  local purge=0
  case "${1:-}" in --purge) purge=1;; "") ;; *) die "usage: $0 down [--purge]";; esac
  setup_work; take_lock
  stop_daemons
  [ $purge = 0 ] || cmd_down_ocs_purge
  log "down"
}

cmd_env() {
  echo "export SGE_ROOT=$SGE_ROOT"
  echo "export SGE_CELL=$SGE_CELL"
  echo "export SGE_QMASTER_PORT=$SGE_QMASTER_PORT"
  echo "export SGE_EXECD_PORT=$SGE_EXECD_PORT"
  # shellcheck disable=SC2016  # $PATH is for the shell that evals this
  echo 'export PATH='"$OCS_BIN"':$PATH'
}

# OCS 9 gives every exec host complex_values slots=<its core count> when the
# execd first reports (unless a manager set slots): with 2 cores, 2 jobs per
# host where the queue offers GE_SLOTS. Set it to GE_SLOTS, as on Son of
# Grid Engine, where only the queue's slots count.
eval "$(declare -f ensure_hosts_config | sed '1s/^ensure_hosts_config/soge_ensure_hosts_config/')"
ensure_hosts_config() {
  local h cur
  soge_ensure_hosts_config
  for h in "${H_NAMES[@]}"; do
    cur=$(qconf -se "$h" 2>/dev/null | awk '$1=="complex_values"{print $2}' | tr ',' '\n' | awk -F= '$1=="slots"{print $2}')
    [ "$cur" = "$GE_SLOTS" ] && continue
    log "exec host $h: slots '${cur:-unset}' -> $GE_SLOTS"
    qc -mattr exechost complex_values "slots=$GE_SLOTS" "$h"
  done
}

# qrsh/qlogin use the builtin transport, as Debian's Son of Grid Engine does:
# inst_sge leaves rsh_command/rsh_daemon/rlogin_command out, and OCS then looks
# for utilbin/rshd, which it does not build.
eval "$(declare -f ensure_global_config | sed '1s/^ensure_global_config/soge_ensure_global_config/')"
ensure_global_config() {
  local k missing=""
  soge_ensure_global_config
  qconf -sconf global | join_folded > "$CONF/global.cur"
  cp "$CONF/global.cur" "$CONF/global"
  for k in qlogin_command qlogin_daemon rlogin_command rlogin_daemon rsh_command rsh_daemon; do
    [ "$(awk -v k="$k" '$1==k{print $2}' "$CONF/global.cur")" = builtin ] && continue
    set_conf_lines "$CONF/global" "$k" builtin; missing="$missing $k"
  done
  [ -n "$missing" ] || return 0
  log "global config: builtin$missing"
  qc -Mconf "$CONF/global"
}
