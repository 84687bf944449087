# Sourced by logship's scripts (POSIX sh): this service's own section of $SRVCFG, with
# defaults.  Relative paths are relative to this directory.  When web ships its access log
# through logship, web's scripts pass a synthesized $SRVCFG with absolute paths.
[ -n "${SRVCFG:-}" ] || SRVCFG=$(jq -cM . ./workcfg.json 2>/dev/null || echo '{}')
logship_cfg() { printf '%s' "$SRVCFG" | jq -r "(.logship // {}) | $1 // empty" 2>/dev/null || true; }
logship_count() { logship_cfg ".$1 | (numbers, (strings | tonumber?)) | select(. >= 1) | floor"; }

logfile=$(logship_cfg '.source | strings | select(length > 0)')
logfile=${logfile:-./inbox/app.log}
outbox=$(logship_cfg '.outbox | strings | select(length > 0)')
outbox=${outbox:-./outbox}
batch=$(logship_count batch)
batch=${batch:-100}
flush=$(logship_count flush)
flush=${flush:-2}
keep=$(logship_count keep)
keep=${keep:-200}
forward=$(logship_cfg '.forward | strings | select(test("^[^:/ ]+:[0-9]{1,5}$"))')
