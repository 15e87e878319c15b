#!/usr/bin/env bash
# The demo: a real three-host Grid Engine on this machine, a real SquashFS image served
# by nginx, the kit installed with `sge-image install --starter`, and arrays of tasks
# submitted with `qsub -l image=demo` exactly as a researcher would; each task runs
# inside the image (Charliecloud's ch-run). Run as root on Debian.
#
#   bash scripts/demo.sh          run it (about a minute on a fresh machine, plus apt)
#   bash scripts/demo.sh --keep   ... and leave the kit installed, to try qsub yourself
#   bash scripts/demo.sh --undo   remove everything it changed on this machine
#
# GE_FLAVOR=ocs runs it all on Open Cluster Scheduler 9.1.4 (built from source on the
# first run) instead of Son of Grid Engine 8.1.9 (GE_FLAVOR=soge, the default).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=$(pwd)
export GE_FLAVOR=${GE_FLAVOR:-soge}
case "$GE_FLAVOR" in
  soge) DEMO=/var/tmp/sge-image-kit-demo; ENGINE="Son of Grid Engine 8.1.9" ;;
  ocs) DEMO=/var/tmp/sge-image-kit-demo-ocs; ENGINE="Open Cluster Scheduler 9.1.4" ;;
  *) echo "demo: GE_FLAVOR must be soge or ocs"; exit 2 ;;
esac
# Its own directory: /opt/sge-image-kit is where the README has an admin install the
# kit, and --undo must never remove a real installation.
VENV=/opt/sge-image-kit-demo/venv
TASKS=${TASKS:-50}

say() { printf '\n== %s\n' "$*"; }

if [ "${1:-}" = "--undo" ]; then
  # Everything the kit's scripts started or made, whichever engine (or both) the demo
  # and the tests ran on: GE_FLAVOR does not narrow it.
  for f in ocs soge; do
    case $f in soge) d=/var/tmp/sge-image-kit-demo ;; *) d=/var/tmp/sge-image-kit-demo-ocs ;; esac
    if [ -x "$VENV/bin/sge-image" ] && [ -f "$d/config.yaml" ]; then
      # quiet: "nothing to uninstall" is the normal case here, not an error
      ( eval "$(GE_FLAVOR=$f bash lab/ge-cluster.sh env)" 2>/dev/null
        "$VENV/bin/sge-image" --config "$d/config.yaml" uninstall >/dev/null 2>&1 ) \
        && echo "demo: the kit is uninstalled from the $f cluster" || true
    fi
    [ -f "$d/nginx/nginx.pid" ] && kill "$(cat "$d/nginx/nginx.pid")" 2>/dev/null || true
  done
  # ch-run serves its image's FUSE mount inside the job's own mount namespace, and both
  # end with the job. End any ch-run of the demos' images a hard stop left behind (by
  # pid), and (below) say whether a mount is left.
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null) || continue
    case "$cmd" in "ch-run "*"/var/tmp/sge-image-kit-"*) kill -9 "${p#/proc/}" 2>/dev/null || true ;; esac
  done
  # OCS first: Son of Grid Engine's purge then removes the /etc/hosts lines both use.
  if [ -d /var/lib/sge-image-kit-ocs ]; then GE_FLAVOR=ocs bash lab/ge-cluster.sh down --purge; fi
  GE_FLAVOR=soge bash lab/ge-cluster.sh down --purge
  # the demos' and the test suite's work dirs and virtualenvs, the cluster lock
  rm -rf /var/tmp/sge-image-kit-demo /var/tmp/sge-image-kit-demo-ocs /opt/sge-image-kit-demo \
    /opt/sge-image-kit-test /var/tmp/sge-image-kit-test /var/tmp/sge-image-kit-test-* \
    /var/tmp/sge-image-kit-ge.lock
  case "$(readlink /usr/local/bin/sge-image 2>/dev/null)" in
    /opt/sge-image-kit-demo/*) rm -f /usr/local/bin/sge-image ;;
  esac
  # The Grid Engine admin user: Debian's purge keeps system users, and the OCS lab made
  # its own; with no cluster left nothing runs as it (checked: never while a process does).
  # The same for the node agent's own user, which uninstall removes where install made it.
  for u in sgeadmin sge-image-agent; do
    if id "$u" >/dev/null 2>&1 && ! pgrep -u "$u" >/dev/null 2>&1; then
      userdel "$u" 2>/dev/null && echo "demo: removed the user $u" || true
    fi
  done
  if grep -q -e '\.ch/mnt' -e 'sge-image-kit' /proc/mounts; then
    echo "demo: WARNING: a container image is still mounted:" >&2
    grep -e '\.ch/mnt' -e 'sge-image-kit' /proc/mounts | awk '{print "  " $2}' >&2
  else
    echo "demo: no container process or FUSE mount left"
  fi
  # ch-run's per-user mount points (/var/tmp/$USER.ch/mnt): only empty ones go
  rmdir /var/tmp/*.ch/mnt /var/tmp/*.ch 2>/dev/null || true
  echo "demo: undone: every Grid Engine cluster the kit's scripts started is stopped and removed"
  echo "      (Son of Grid Engine's packages purged, /etc/hosts restored), the demos' and the tests'"
  echo "      work dirs and virtualenvs removed. Left on purpose: the Debian packages that"
  echo "      scripts/setup.sh and the OCS build installed (apt-get remove them if wanted), the"
  echo "      built OCS tree in /var/lib/sge-image-kit-ocs (a build cache; rm -rf it to rebuild),"
  echo "      and /dev/fuse's mode 0666 (the lab's; a normal Debian host has it so)."
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "demo: run as root (it installs Grid Engine)"; exit 1; }
T0=$(date +%s.%N)
# The cluster has one global configuration: one demo or test session at a time.
exec 9>/var/tmp/sge-image-kit-ge.lock
flock 9

say "1/6 packages and the kit's virtualenv"
[ -n "${DEMO_SKIP_SETUP:-}" ] || bash scripts/setup.sh

say "2/6 a three-host Grid Engine cluster on this machine ($ENGINE)"
bash lab/ge-cluster.sh up
export PATH=/usr/bin:/usr/sbin:$PATH
eval "$(bash lab/ge-cluster.sh env)"
HOSTS=$(bash lab/ge-cluster.sh hosts)

say "3/6 a real container image (busybox in SquashFS, its own /etc/os-release), served by nginx on 127.0.0.1"
if [ -f "$DEMO/config.yaml" ] && [ -x "$VENV/bin/sge-image" ]; then
  "$VENV/bin/sge-image" --config "$DEMO/config.yaml" uninstall >/dev/null || true
fi
[ -f "$DEMO/nginx/nginx.pid" ] && kill "$(cat "$DEMO/nginx/nginx.pid")" 2>/dev/null || true
rm -rf "$DEMO"
mkdir -p "$DEMO/srv" "$DEMO/root/bin" "$DEMO/root/etc" "$DEMO/nginx/logs" "$DEMO/out"
chmod 755 "$DEMO"; chmod 777 "$DEMO/out"
cp /bin/busybox "$DEMO/root/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$DEMO/root/bin/$a"; done
# What ch-run binds onto must exist in the read-only image (/mnt/0-2 take the job's
# directories), and so must the /etc files it replaces for the run.
for d in dev proc sys tmp home run root var mnt/0 mnt/1 mnt/2; do mkdir -p "$DEMO/root/$d"; done
touch "$DEMO/root/etc/passwd" "$DEMO/root/etc/group" "$DEMO/root/etc/hosts" "$DEMO/root/etc/resolv.conf"
printf '%s\n' 'NAME="Demo Container Linux"' 'ID=sgedemo' 'VERSION_ID="1.0"' \
  'PRETTY_NAME="Demo Container Linux 1.0 (inside the image)"' > "$DEMO/root/etc/os-release"
# SquashFS rather than SIF: Charliecloud (and Enroot) run only plain SquashFS, Apptainer
# runs both (README: "Container runtimes").
mksquashfs "$DEMO/root" "$DEMO/srv/demo.sqfs" -noappend -quiet -all-root >/dev/null
SHA=$(sha256sum "$DEMO/srv/demo.sqfs" | cut -d' ' -f1)
SIZE=$(stat -c %s "$DEMO/srv/demo.sqfs")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$DEMO/nginx/nginx.conf" <<EOF
daemon on;
pid $DEMO/nginx/nginx.pid;
error_log $DEMO/nginx/logs/error.log;
events { worker_connections 256; }
http {
    access_log $DEMO/nginx/logs/access.log;
    sendfile on;
    server { listen 127.0.0.1:$PORT; root $DEMO/srv; }
}
EOF
nginx -c "$DEMO/nginx/nginx.conf" -p "$DEMO/nginx"
echo "demo.sqfs: $SIZE bytes, sha256 $SHA, http://127.0.0.1:$PORT/demo.sqfs"

say "4/6 the kit, installed for every user Grid Engine runs it as, and wired in"
[ -x "$VENV/bin/python3" ] || /usr/bin/python3 -m venv "$VENV"
"$VENV/bin/python3" -m pip install -q "$KIT" 2>&1 | grep -vi warning || true
# The exec hosts share this machine: a client in node2's namespace would reach qmaster
# from 127.0.0.1 and be refused, so the agents' qhost pins its source address the way
# the execds are pinned (lab/bindshim.c). A real exec host needs no such wrapper.
cat > "$DEMO/qhost-pinned" <<'WRAP'
#!/bin/sh
ip=$(getent hosts "$(hostname)" | awk '{print $1; exit}')
GE_BIND_IP=$ip LD_PRELOAD=libsge-image-kit-bindshim.so exec qhost "$@"
WRAP
chmod 755 "$DEMO/qhost-pinned"
cat > "$DEMO/config.yaml" <<EOF
cache:
  root: $DEMO/cache/{host}     # one cache per exec host (they share this machine)
  max_size: 10G
log:
  file: $DEMO/sge-image.log
agent:
  qhost: [$DEMO/qhost-pinned]
starter:
  runtime: charliecloud        # each job runs inside its image: ch-run IMAGE -- JOB
images:
  demo:
    url: http://127.0.0.1:$PORT/demo.sqfs
    sha256: $SHA
    size: $SIZE
    format: squashfs
EOF
chmod 644 "$DEMO/config.yaml"
"$VENV/bin/sge-image" --config "$DEMO/config.yaml" install --starter
# execd starts the load sensor, and with it each host's node agent: wait for them, on
# the port the kit's settings give (agent.port).
PORT=$("$VENV/bin/python" -c 'import sys; from sge import config; print(config.load(sys.argv[1]).agent.port)' "$DEMO/config.yaml")
for h in $HOSTS; do
  ip=$(getent hosts "$h" | awk '{print $1}')
  for _ in $(seq 1 60); do
    (exec 3<>"/dev/tcp/$ip/$PORT") 2>/dev/null && break; sleep 1
  done
  echo "node agent on $h ($ip:$PORT): $( (exec 3<>"/dev/tcp/$ip/$PORT") 2>/dev/null && echo up || echo DOWN)"
done

cat > "$DEMO/job.sh" <<'EOF'
#!/bin/sh
# A user's job, run by the kit's starter inside its image: it reads the image's own
# /etc/os-release (the host's is Debian's).
. /etc/os-release
echo "task $SGE_TASK_ID on $(hostname) inside: $PRETTY_NAME"
sleep 2
EOF
chmod 755 "$DEMO/job.sh"

run_array() { # run_array LABEL -> prints the summary of one array job
  local label=$1 t0 jid t1 before after pbefore pafter
  rm -f "$DEMO"/out/*.out
  before=$(grep -c 'GET /demo.sqfs ' "$DEMO/nginx/logs/access.log" 2>/dev/null || true)
  pbefore=$(grep -c 'from peer .*verified' "$DEMO/sge-image.log" 2>/dev/null || true)
  t0=$(date +%s.%N)
  jid=$(qsub -terse -t "1-$TASKS" -l image=demo -o "$DEMO/out/\$TASK_ID.out" -j y "$DEMO/job.sh" | tail -1)
  jid=${jid%%.*}
  echo "submitted: qsub -t 1-$TASKS -l image=demo job.sh  (job $jid)"
  while qstat -j "$jid" >/dev/null 2>&1; do sleep 1; done
  t1=$(date +%s.%N)
  after=$(grep -c 'GET /demo.sqfs ' "$DEMO/nginx/logs/access.log" 2>/dev/null || true)
  pafter=$(grep -c 'from peer .*verified' "$DEMO/sge-image.log" 2>/dev/null || true)
  for _ in $(seq 1 30); do
    [ "$(qacct -j "$jid" 2>/dev/null | grep -c '^exit_status')" -ge "$TASKS" ] && break; sleep 1
  done
  echo "$label:"
  echo "  origin downloads (the image server): $((after - before))"
  echo "  peer transfers (host to host, verified): $((pafter - pbefore))"
  echo "  tasks succeeded: $(qacct -j "$jid" | awk '$1=="exit_status" && $2==0' | wc -l) of $TASKS"
  echo "  placement per host: $(qacct -j "$jid" | awk '$1=="hostname"{n[$2]++} END{for(h in n) print h "=" n[h]}' | sort | tr '\n' ' ')"
  echo "  wall time: $(awk -v a="$t1" -v b="$t0" 'BEGIN{printf "%.1f", a-b}') s"
  echo "  what the tasks saw inside the container (its /etc/os-release), per host:"
  cat "$DEMO"/out/*.out 2>/dev/null | sed -n 's/^task [0-9]* on \([^ ]*\) inside: \(.*\)$/\1: \2/p' \
    | sort | uniq -c | awk '{n=$1; $1=""; printf "   %s  (%d tasks)\n", substr($0, 2), n}'
}

say "5/6 a $TASKS-task array on a cold cluster: one origin download, the other hosts copy from a peer"
run_array "cold cluster"
for h in $HOSTS; do
  printf '  %s reports: %s\n' "$h" "$(qhost -F img_demo -h "$h" | grep -o 'hl:img_demo=[^ ]*' || echo 'not cached')"
done

say "6/6 the same array again: every host is warm, nothing is downloaded"
echo "(the wall time stays close to the cold one: with $TASKS two-second tasks on 12 slots,"
echo " scheduling rounds and task start-up dominate; the download took a small share of it)"
sleep 6   # one load report interval, so the scheduler sees the warm hosts
run_array "warm cluster"
qstat -f | grep -q ' E' && echo "WARNING: a queue is in error state" || echo "  no queue in error state"

echo
echo "demo: done in $(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{printf "%.0f", a-b}') s."
if [ "${1:-}" = "--keep" ]; then
  cat <<EOF
The kit stays installed. Try it yourself (sge-image is linked into /usr/local/bin):
  eval "\$(GE_FLAVOR=$GE_FLAVOR bash lab/ge-cluster.sh env)"; qsub -l image=demo $DEMO/job.sh; qsub -l image=nope $DEMO/job.sh
  (the first runs inside the image: its output file in your home says "inside: Demo Container Linux")
  sge-image --config $DEMO/config.yaml status --cluster
(The test suite needs the cluster without it: sge-image --config $DEMO/config.yaml uninstall)
EOF
  [ -e /usr/local/bin/sge-image ] || ln -s "$VENV/bin/sge-image" /usr/local/bin/sge-image
else
  "$VENV/bin/sge-image" --config "$DEMO/config.yaml" uninstall >/dev/null
  kill "$(cat "$DEMO/nginx/nginx.pid")" 2>/dev/null || true
  echo "The kit was uninstalled again (qconf shows the cluster as before); --keep keeps it."
fi
cat <<EOF

What this changed on the machine: Debian packages (scripts/setup.sh, Grid Engine), marked lines in
/etc/hosts for node1..node3, a running three-host $ENGINE, /opt/sge-image-kit-demo and $DEMO.
Undo all of it, whichever engines ran:  bash scripts/demo.sh --undo
EOF
