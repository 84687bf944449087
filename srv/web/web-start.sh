#!/bin/bash
# web: a static web server, supervised by fsm-init in status-check mode.
#
# The start-script contract of imginit's sibling images: read this service's own section
# of $SRVCFG (web-config.sh, with jq), prepare, start helpers, then exec the daemon in the
# foreground under a name of its own (web-httpd), so that `pidof web-httpd` finds it.
# fsm-init stops the whole session of the previous instance before a restart, so there is
# no pkill loop here, and the helpers need no setsid.
set -eu
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd "$(dirname "$0")"
. ./web-config.sh

# Readiness the s6 way: with "workready": "fd:N" fsm-init gives this script a pipe as its
# file descriptor N, and the instance is ready once a newline comes down it (and, in
# status-check mode, a check cycle passed).  web-httpd.py writes it when the socket listens,
# then closes N; the helpers below must not hold a copy (one that is never written to keeps
# fsm-init's end from seeing the end of the pipe), so they close N first.  Without that
# setting, or with N not open (the script run by hand), everything is as it always was.
ready_fd=$(printf '%s' "$SRVCFG" | jq -r '.workready | strings
    | capture("^\\s*fd:(?<n>[0-9]{1,4})\\s*$"; "i").n // empty' 2>/dev/null || true)
if [ -n "$ready_fd" ] && ready_fd=$((10#$ready_fd)) && [ "$ready_fd" -ge 3 ] && { : >&"$ready_fd"; } 2>/dev/null; then
    unready() { exec {ready_fd}>&-; }
else
    ready_fd=
    unready() { :; }
fi

mkdir -p ./logs "$docroot"
[ -e "$docroot/index.html" ] || echo '<!doctype html><title>web</title><p>served by fsm-init</p>' > "$docroot/index.html"

# Ship the access log through the sibling service logship, wired the way the original's
# composite images wired sub-services: its start script with a synthesized $SRVCFG.  The
# marker and the config let PeriodicST-logship and PeriodicMT-publish run logship's checks.
rm -f ./logship.Enabled ./logship.cfg
if [ "$logship" = yes ]; then
    if [ -x ../logship/logship-start.sh ]; then
        jq -cn --arg source "$PWD/logs/access.log" --arg outbox "$PWD/logs/outbox" \
            '{logship: {source: $source, outbox: $outbox, batch: 50, flush: 2, keep: 100}}' > ./logship.cfg
        : > ./logship.Enabled
        (unready; SRVCFG=$(cat ./logship.cfg) exec ../logship/logship-start.sh) &
    else
        echo "web: ../logship is not in this image; the access log is not shipped" >&2
    fi
fi

echo "web: serving $PWD/${docroot#./} on $bind:$port" >&2
# http.server logs each request on stderr: to the container log and to logs/access.log.
if [ -n "$ready_fd" ]; then
    # http.server's own command line, with the newline on fd N once it listens.
    exec -a web-httpd python3 -u ./web-httpd.py "$ready_fd" --bind "$bind" --directory "$docroot" "$port" \
        2> >(unready; exec tee -a ./logs/access.log >&2)
fi
exec -a web-httpd python3 -u -m http.server --bind "$bind" --directory "$docroot" "$port" \
    2> >(exec tee -a ./logs/access.log >&2)
