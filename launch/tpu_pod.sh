#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice (v4/v5e/v5p, any number of hosts) from your workstation:
# every worker gets this checkout and runs the same `python3 main.py ...`; jax finds the other
# workers by itself (mnv3_jax/parallel/distributed.py). Needs gcloud, authenticated, and an existing TPU VM.
#
#   export TPU_NAME=my-pod ZONE=us-central2-b
#   launch/tpu_pod.sh setup
#   launch/tpu_pod.sh run --config=configs/small.py --workdir=gs://BUCKET/mnv3_small
#   launch/tpu_pod.sh status | tail [WORKER] | stop
#
# Commands (each prints the gcloud command it runs; DRY_RUN=1 only prints):
#   setup        copy this checkout (without .git/.venv) to ~/REMOTE_DIR on all workers, then
#                pip install requirements.txt and jax[tpu] there
#   run ARGS...  start `python3 main.py ARGS` on all workers in a tmux session (nohup if tmux is
#                missing); each worker logs to ~/LOG_DIR/<its hostname>.log on its own disk
#   status       per worker: running or not, and the last log lines
#   tail [W]     follow worker W's log (default 0)
#   stop         SIGTERM on all workers: jax's preemption service makes them checkpoint at the
#                same step and exit
# Environment: TPU_NAME, ZONE (required), PROJECT (default: gcloud's), REMOTE_DIR (default
# mnv3_jax) and LOG_DIR (default mnv3_logs), both relative to the remote home, SESSION (tmux
# session name, default mnv3).
# `on-worker start|status|stop ARGS` is what the workers run (from their copy of this script).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REMOTE_DIR="${REMOTE_DIR:-mnv3_jax}"
LOG_DIR="${LOG_DIR:-mnv3_logs}"
SESSION="${SESSION:-mnv3}"

usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

quote() {   # shell words, single-quoted only where needed (readable, copy-pasteable)
  local out=() word
  for word in "$@"; do
    local flag=''
    if [[ "$word" =~ ^(--[a-z_]+=)(.*)$ ]]; then flag="${BASH_REMATCH[1]}" word="${BASH_REMATCH[2]}"; fi
    if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+~-]+$ ]]; then out+=("$flag$word")
    else out+=("$flag'${word//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

on_worker() {   # runs on a TPU VM worker, in its copy of the checkout
  local pidfile="$HOME/$LOG_DIR/run.pid" log="$HOME/$LOG_DIR/$(hostname).log"
  mkdir -p "$HOME/$LOG_DIR"
  case "${1:-}" in
    start)
      shift
      if command -v tmux >/dev/null; then
        tmux new-session -d -s "$SESSION" "$(quote bash "$ROOT/launch/tpu_pod.sh" on-worker exec "$@")"
      else
        nohup bash "$ROOT/launch/tpu_pod.sh" on-worker exec "$@" >/dev/null 2>&1 &
      fi
      echo "$(hostname): started; log $log" ;;
    exec)   # the pid file holds python's pid: exec keeps it
      shift; cd "$ROOT"; echo $$ >"$pidfile"
      exec python3 main.py "$@" >>"$log" 2>&1 ;;
    status)
      if kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; then echo "$(hostname): running"
      else echo "$(hostname): not running"; fi
      tail -n 3 "$log" 2>/dev/null || true ;;
    stop)
      if kill -TERM "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; then echo "$(hostname): SIGTERM sent"
      else echo "$(hostname): not running"; fi ;;
    *) echo "tpu_pod.sh on-worker: unknown command '${1:-}'" >&2; exit 2 ;;
  esac
}

[ $# -ge 1 ] || usage
command="$1"; shift
case "$command" in
  help | -h) usage 0 ;;
  on-worker) on_worker "$@"; exit ;;
esac
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}" "${ZONE:?set ZONE to the TPU VM zone}"
GCLOUD=(gcloud compute tpus tpu-vm)
FLAGS=(--zone="$ZONE")
[ -n "${PROJECT:-}" ] && FLAGS+=(--project="$PROJECT")

run() {   # prints the command, then runs it unless DRY_RUN=1
  quote "$@"
  [ "${DRY_RUN:-0}" = 1 ] || "$@"
}
on_workers() {   # on_workers WORKER ARGS...: this script's on-worker ARGS on one worker or all
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${FLAGS[@]}" --worker="$1" --command="$(quote \
    env LOG_DIR="$LOG_DIR" SESSION="$SESSION" bash "$REMOTE_DIR/launch/tpu_pod.sh" on-worker \
    "${@:2}")"
}

case "$command" in
  setup)
    archive="${TMPDIR:-/tmp}/mnv3_jax_$$.tgz"
    run tar -czf "$archive" -C "$ROOT" --exclude=.git --exclude=.venv --exclude=__pycache__ .
    run "${GCLOUD[@]}" scp "$archive" "$TPU_NAME:mnv3_jax.tgz" "${FLAGS[@]}" --worker=all
    jax_version="$(sed -nE 's/^jax\[cpu\]~=([0-9.]+).*/\1/p' "$ROOT/requirements.txt")"
    run "${GCLOUD[@]}" ssh "$TPU_NAME" "${FLAGS[@]}" --worker=all --command="mkdir -p \
$REMOTE_DIR && tar -xzf mnv3_jax.tgz -C $REMOTE_DIR && cd $REMOTE_DIR && python3 -m pip install \
-q -r requirements.txt 'jax[tpu]~=$jax_version'"
    ;;
  run)
    [ $# -ge 1 ] || { echo "tpu_pod.sh run: give main.py's arguments" >&2; exit 2; }
    on_workers all start "$@" ;;
  status) on_workers all status ;;
  stop) on_workers all stop ;;
  tail) run "${GCLOUD[@]}" ssh "$TPU_NAME" "${FLAGS[@]}" --worker="${1:-0}" \
          --command="tail -n 50 -F ~/$LOG_DIR/\$(hostname).log" ;;
  *) echo "tpu_pod.sh: unknown command '$command'" >&2; usage ;;
esac
