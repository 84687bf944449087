#!/bin/bash
# logship: ships a log file in batches.  Daemon mode (workwatch 0): fsm-init starts it
# again, workintvl seconds after it exits.
#
# The start-script contract of imginit's sibling images: read this service's own section
# of $SRVCFG (logship-config.sh, with jq), guard against a second instance with flock -n
# (as ctnpppoebr's pbrlog did), then exec the shipper loop in the foreground under a name
# of its own, logship-shipper.
set -eu
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd "$(dirname "$0")"
. ./logship-config.sh

# One shipper per directory.  fd 9 stays open through the exec, so the lock is held for
# exactly the shipper's life; PeriodicST-shipper tests it.
exec 9>>./logship.lock
if ! flock -n 9; then
    echo "logship: another shipper holds $PWD/logship.lock; not starting a second one" >&2
    exit 75
fi
mkdir -p "$(dirname "$logfile")" "$outbox"
echo "logship: shipping $logfile to $outbox${forward:+ and to $forward}" \
     "(batches of up to $batch lines, at least every ${flush}s)" >&2
exec -a logship-shipper bash ./shipper.sh "$logfile" "$outbox" "$batch" "$flush" "$forward"
