#!/usr/bin/env bash
# Stand-in for the training driver (`$PYTHON launch/train.py ...`), for
# tests/test_slurm_scripts.py: writes its arguments, one a line, to $FAKE_TRAIN_DIR/args;
# then exits with FAKE_TRAIN_EXIT when that is set, or else waits for SIGUSR1 or SIGTERM,
# writes the signal's name to $FAKE_TRAIN_DIR/signals and exits 75, as launch/train.py
# does once it has checkpointed. Without a signal it gives up after a minute (exit 1), so
# that a test that fails leaves nothing running.
set -euo pipefail

# shellcheck disable=SC2329 # called by the traps below, which shellcheck 0.11 overlooks
stop() {
  echo "$1" >>"$FAKE_TRAIN_DIR/signals"
  exit 75
}
trap 'stop USR1' USR1
trap 'stop TERM' TERM
# Written once the traps are set: the test signals as soon as it sees the file.
printf '%s\n' "$@" >"$FAKE_TRAIN_DIR/args"
if [[ -n ${FAKE_TRAIN_EXIT:-} ]]; then
  exit "$FAKE_TRAIN_EXIT"
fi
for _ in $(seq 600); do
  sleep 0.1
done
exit 1
