#!/usr/bin/env bash
# A pod on one machine: starts N processes of main.py on 127.0.0.1 that form one JAX cluster
# (gloo collectives between them), each with D fake CPU devices, one log per process.
#
#   launch/local.sh [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-l LOG_DIR] [-p PORT] -- MAIN_ARGS...
#   launch/local.sh -n 2 -d 4 -l /tmp/pod_logs -- --config=configs/demo.py --workdir=/tmp/pod
#
# Defaults: 2 processes x 4 devices, logs in ./pod_logs (worker_<i>.log), a free port. Prints
# "worker <i>: pid <pid>, log <file>" per process, waits for all, prints each exit status and exits
# with the first non-zero one (0 if all succeeded). SIGINT/SIGTERM are forwarded to the workers
# (SIGTERM: they checkpoint at the same step and exit). $PYTHON is the interpreter (default python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
NUM=2 DEVICES=4 LOG_DIR=pod_logs PORT=
usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while getopts 'n:d:l:p:h' opt; do
  case "$opt" in
    n) NUM="$OPTARG" ;;
    d) DEVICES="$OPTARG" ;;
    l) LOG_DIR="$OPTARG" ;;
    p) PORT="$OPTARG" ;;
    h) usage 0 ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
for pair in "-n:$NUM" "-d:$DEVICES"; do
  if ! [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]]; then
    echo "local.sh: ${pair%%:*} must be a positive integer, got '${pair#*:}'" >&2; exit 2
  fi
done
if [ -z "$PORT" ]; then
  PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
mkdir -p "$LOG_DIR"
# The device count is ours to set: drop one inherited from the caller's XLA_FLAGS.
XLA_FLAGS="$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}")"

pids=()
forward() { kill -s "$1" "${pids[@]}" 2>/dev/null || true; }
trap 'forward INT' INT
trap 'forward TERM' TERM
for ((i = 0; i < NUM; i++)); do
  log="$LOG_DIR/worker_$i.log"
  MNV3_COORDINATOR_ADDRESS="127.0.0.1:$PORT" MNV3_NUM_PROCESSES="$NUM" MNV3_PROCESS_ID="$i" \
    JAX_PLATFORMS=cpu \
    XLA_FLAGS="$XLA_FLAGS --xla_force_host_platform_device_count=$DEVICES" \
    "$PYTHON" "$ROOT/main.py" "$@" >"$log" 2>&1 &
  pids+=("$!")
  echo "worker $i: pid $!, log $log"
done

status=0
for ((i = 0; i < NUM; i++)); do
  # `wait` returns early when a forwarded signal arrives: wait again until the worker is gone.
  while true; do
    rc=0
    wait "${pids[$i]}" || rc=$?
    kill -0 "${pids[$i]}" 2>/dev/null || break
  done
  echo "worker $i: exit status $rc"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status="$rc"; fi
done
exit "$status"
