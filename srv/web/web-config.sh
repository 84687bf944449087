# Sourced by web's scripts (POSIX sh): this service's own section of $SRVCFG, with defaults.
# fsm-init exports the effective config to the start script and to every Periodic script;
# run by hand, the scripts read ./workcfg.json.  The filters are type-strict, as in the
# sibling images of imginit, but also take numbers written as strings ("8080").
[ -n "${SRVCFG:-}" ] || SRVCFG=$(jq -cM . ./workcfg.json 2>/dev/null || echo '{}')
web_cfg() { printf '%s' "$SRVCFG" | jq -r "(.web // {}) | $1 // empty" 2>/dev/null || true; }

port=$(web_cfg '.port | (numbers, (strings | tonumber?)) | select(. >= 1 and . <= 65535) | floor')
port=${port:-8080}
bind=$(web_cfg '.bind | strings | select(length > 0)')
bind=${bind:-0.0.0.0}
docroot=$(web_cfg '.docroot | strings | select(length > 0)')
docroot=${docroot:-./htdocs}
logship=$(web_cfg '.logship | if type == "boolean" then (if . then "yes" else "no" end) else (strings | ascii_downcase) end')
case $logship in yes | true) logship=yes ;; *) logship=no ;; esac
case $bind in
    0.0.0.0) checkhost=127.0.0.1 ;;
    ::) checkhost=::1 ;;
    *) checkhost=$bind ;;
esac
