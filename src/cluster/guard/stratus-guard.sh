#!/bin/bash
# stratus-guard: the floor under a cluster's lifetime, on each of its nodes. stratus's reaper is
# the normal path (it warns, then terminates the cluster); this runs on the node itself, so a
# cluster still ends when the machine stratus runs on is down. Run as root every 30 seconds by
# stratus-guard.timer on an instance, every 10 seconds by the node process on a local node.
#
#   stratus-guard [tick]   warn at 60, 15 and 5 minutes before the deadline and at it,
#                          broadcast a notice stratus left, power off once the deadline and the
#                          grace have passed, and refresh the login message
#   stratus-guard show     print the login message (the deadline, the cost so far, the rate)
#   stratus-guard idle     what the reaper's idle rule reads (run by stratus over SSH as the
#                          login user): `sessions=N cpu=PERCENT busy_age=SECONDS|none`
#
# Its files, in $STATE/clock (/var/lib/stratus/clock, owned by the login user, who is the one
# stratus connects as):
#   deadline   the lifetime's end, in seconds since the epoch (`stratus extend` moves it)
#   facts      cluster=, owner=, grace= (seconds), started= (epoch), rate= (micro-dollars per
#              730 hours of the whole cluster)
#   notice     a message stratus left for the cluster's terminals (the reaper's warning)
# A deadline that is not a number (a half-written or tampered file) counts as the one set at
# boot, kept where the login user cannot write.
#
# A local node (STRATUS_STATE_DIR set: a process on a shared machine) never writes to the
# machine's terminals and never powers it off: what it would broadcast goes to its standard
# output, which the node writes to its own SSH sessions, and exit status 99 asks the node to stop.
set -uo pipefail

state=${STRATUS_STATE_DIR:-/var/lib/stratus}
clock="$state/clock"
local_node=0
if [ -n "${STRATUS_STATE_DIR:-}" ]; then
    local_node=1
fi

number() { [[ $1 =~ ^[0-9]{1,12}$ ]]; }

cluster=cluster owner="" grace=0 started=0 rate=""
if [ -r "$clock/facts" ]; then
    while IFS='=' read -r key value; do
        case $key in
            cluster) cluster=$value ;;
            owner) owner=$value ;;
            grace) number "$value" && grace=$value ;;
            started) number "$value" && started=$value ;;
            rate) number "$value" && rate=$value ;;
        esac
    done < "$clock/facts"
fi

deadline=$(head -c 32 "$clock/deadline" 2>/dev/null | tr -d '[:space:]')
if ! number "$deadline"; then
    deadline=$(head -c 32 "$state/guard/boot-deadline" 2>/dev/null | tr -d '[:space:]')
    number "$deadline" || deadline=""
fi

when() { date -d "@$1" '+%Y-%m-%d %H:%M %Z'; }

# "2 h 05 min", "14 min", "under a minute"
span() {
    local s=$1
    if ((s < 60)); then
        echo "under a minute"
    elif ((s < 3600)); then
        echo "$((s / 60)) min"
    else
        printf '%d h %02d min\n' $((s / 3600)) $((s % 3600 / 60))
    fi
}

dollars() {
    local m=$1
    local cents=$(((m + 5000) / 10000))
    printf '$%d.%02d' $((cents / 100)) $((cents % 100))
}

show() {
    local now
    now=$(date +%s)
    echo "stratus: cluster $cluster${owner:+ of $owner}"
    if [ -n "$rate" ]; then
        local per_hour=$(((rate + 365) / 730))
        local so_far=$((rate * (now - started) / 2628000))
        echo "  cost: about $(dollars "$so_far") so far, at $(dollars "$per_hour")/h"
    fi
    if [ -n "$deadline" ]; then
        if ((now < deadline)); then
            echo "  deadline: $(when "$deadline"), in $(span $((deadline - now))); then it is terminated"
        else
            echo "  deadline: $(when "$deadline"), passed; it is being terminated"
        fi
        echo "  more time: stratus extend $cluster 1h (where you launched it)"
    else
        echo "  deadline: none"
    fi
}

say() {
    local text
    text=$(printf '%s\n' "$@")
    if ((local_node)); then
        printf '%s\n' "$text"
    else
        printf '%s\n' "$text" | wall 2>/dev/null || true
    fi
}

power_off() {
    if ((local_node)); then
        exit 99
    fi
    systemctl --no-block poweroff 2>/dev/null || shutdown -h now || poweroff
    exit 0
}

# Each warning once per deadline: an extension gets its own.
warned_file="$state/guard/warned"
warned() { grep -qxF "$1" "$warned_file" 2>/dev/null; }
mark() { echo "$1" >> "$warned_file"; }

tick() {
    mkdir -p "$state/guard"
    local now
    now=$(date +%s)
    if [ -n "$deadline" ]; then
        local off=$((deadline + grace)) left=$((deadline - now))
        if ((now >= off)); then
            say "stratus: cluster $cluster passed its deadline ($(when "$deadline")) and its grace: this node is powering off now."
            power_off
        fi
        if ((left <= 0)); then
            if ! warned "$deadline:0"; then
                mark "$deadline:0"
                say "stratus: cluster $cluster's lifetime ended at $(when "$deadline")." \
                    "It will be terminated by $(when "$off") at the latest, and everything on it lost: copy your results off now."
            fi
        else
            # The nearest threshold crossed, once; those further out are then past.
            local m
            for m in 5 15 60; do
                if ((left <= m * 60)); then
                    if ! warned "$deadline:$m"; then
                        local n
                        for n in 5 15 60; do
                            ((n >= m)) && mark "$deadline:$n"
                        done
                        say "stratus: cluster $cluster ends in $(span "$left"), at $(when "$deadline"): it is then terminated, and everything on it lost." \
                            "Copy your results off, or give it more time: stratus extend $cluster 1h (where you launched it)."
                    fi
                    break
                fi
            done
        fi
    fi
    if [ -s "$clock/notice" ]; then
        local sum
        sum=$(cksum < "$clock/notice")
        if [ "$sum" != "$(cat "$state/guard/notice-sent" 2>/dev/null)" ]; then
            echo "$sum" > "$state/guard/notice-sent"
            say "$(head -c 2000 "$clock/notice")"
        fi
    fi
    show > "$state/guard/motd.new" && mv -f "$state/guard/motd.new" "$state/guard/motd"
}

# Interactive sessions: logins on a terminal (an instance's utmp; a local node counts its own).
sessions() {
    if ((local_node)); then
        local n
        n=$(head -c 16 "$state/guard/sessions" 2>/dev/null | tr -cd '0-9')
        echo "${n:-0}"
    else
        who | wc -l
    fi
}

# CPU ticks: the whole machine's busy and total (an instance), or the node's own processes'
# (a local node, which shares the machine).
machine_ticks() {
    local user nice system idle iowait irq softirq steal
    read -r _ user nice system idle iowait irq softirq steal _ < /proc/stat
    echo "$((user + nice + system + irq + softirq + steal)) $((user + nice + system + idle + iowait + irq + softirq + steal))"
}

# A local node's own processes (those carrying its marker) and their CPU ticks, `PID TICKS`.
node_ticks() {
    local f pid rest
    for f in /proc/[0-9]*/environ; do
        pid=${f#/proc/}
        pid=${pid%/environ}
        [ "$pid" = "$$" ] && continue
        if grep -qzxF "STRATUS_NODE_ID=${STRATUS_NODE_ID:-}" "$f" 2>/dev/null; then
            rest=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
            rest=${rest##*) }
            # shellcheck disable=SC2086 # the fields, split
            set -- $rest
            echo "$pid $((${12} + ${13}))"
        fi
    done
}

# Percent of one CPU over a second: the machine's on an instance; on a local node, its own
# processes' that lived through the second (a probe's own short-lived ones do not count).
cpu_percent() {
    if ((local_node)); then
        local -A before=()
        local pid ticks used=0 hz
        hz=$(getconf CLK_TCK)
        while read -r pid ticks; do
            before[$pid]=$ticks
        done < <(node_ticks)
        sleep 1
        while read -r pid ticks; do
            if [ -n "${before[$pid]:-}" ] && ((ticks > before[$pid])); then
                used=$((used + ticks - before[$pid]))
            fi
        done < <(node_ticks)
        echo $((used * 100 / hz))
    else
        local a b
        read -r -a a <<< "$(machine_ticks)"
        sleep 1
        read -r -a b <<< "$(machine_ticks)"
        local total=$((b[1] - a[1]))
        ((total > 0)) || total=1
        echo $(((b[0] - a[0]) * 100 / total))
    fi
}

idle() {
    local busy_age=none
    if [ -e "$HOME/.stratus-busy" ]; then
        busy_age=$(($(date +%s) - $(stat -c %Y "$HOME/.stratus-busy")))
    fi
    echo "sessions=$(sessions) cpu=$(cpu_percent) busy_age=$busy_age"
}

case ${1:-tick} in
    show) show ;;
    idle) idle ;;
    tick) tick ;;
    *)
        echo "usage: stratus-guard [tick|show|idle]" >&2
        exit 2
        ;;
esac
