# The shipper loop, exec'd by logship-start.sh as "logship-shipper" (bash).
#
# Follows SOURCE from the offset saved in OUTBOX/.offset and writes what arrives to
# OUTBOX/batch-*.log: BATCH lines at most, or what arrived within FLUSH seconds.  A batch
# file appears atomically (written aside, then renamed) and the offset is saved after it,
# so every line is shipped at least once, also across restarts.  With FORWARD (host:port)
# every batch is then sent there with nc and moved to OUTBOX/forwarded/; a batch that
# cannot be sent stays for the next try.  SIGTERM ships what was read, then exits 0.
set -u
export LC_ALL=C # ${#line} counts bytes: the offset is a byte offset
source=$1 outbox=$2 batch=$3 flush=$4 forward=$5
offset_file=$outbox/.offset

offset=$(cat "$offset_file" 2>/dev/null) || offset=0
[[ $offset =~ ^[0-9]+$ ]] || offset=0
size=$(stat -c %s "$source" 2>/dev/null) || size=0
if ((size < offset)); then
    echo "logship: $source is shorter than the saved offset $offset (rotated or truncated): from its start" >&2
    offset=0
fi

lines=() carry="" pending=0 seq=0

forward_all() {
    mkdir -p "$outbox/forwarded"
    local file
    for file in "$outbox"/batch-*.log; do
        [ -e "$file" ] || return 0
        if ! nc -N -w 5 "${forward%:*}" "${forward##*:}" <"$file" >/dev/null 2>&1; then
            echo "logship: cannot forward to $forward; ${file##*/} waits for the next batch" >&2
            return 0
        fi
        mv -f "$file" "$outbox/forwarded/"
    done
}

ship() {
    ((${#lines[@]})) || return 0
    seq=$((seq + 1))
    local name
    printf -v name 'batch-%(%Y%m%dT%H%M%S)T-%d-%06d.log' -1 "$$" "$seq"
    printf '%s\n' "${lines[@]}" >"$outbox/.$name" && mv -f "$outbox/.$name" "$outbox/$name" || return 1
    offset=$((offset + pending))
    printf '%s\n' "$offset" >"$offset_file.tmp" && mv -f "$offset_file.tmp" "$offset_file"
    echo "logship: shipped ${#lines[@]} line(s) in $name" >&2
    lines=() pending=0
    [ -z "$forward" ] || forward_all
}

follower=""
stop() {
    ship
    [ -z "$follower" ] || kill "$follower" 2>/dev/null
    exit "$1"
}
trap 'stop 0' TERM INT

while :; do
    # $! is the follower's pid (the process substitution below) from the first round on.
    [ -n "$follower" ] || follower=$!
    if IFS= read -r -t "$flush" line; then
        line=$carry$line carry=""
        lines+=("$line")
        pending=$((pending + ${#line} + 1))
        ((${#lines[@]} < batch)) || ship
    elif (($? > 128)); then
        # The time-out: ship what arrived; a line still being written waits for its end.
        carry+=$line
        ship
    else
        echo "logship: stopped following $source" >&2
        stop 1
    fi
done < <(exec tail -c "+$((offset + 1))" -F "$source" 2>/dev/null 9>&-)
