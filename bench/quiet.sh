#!/usr/bin/env bash
# Runs a benchmark as if the machine were quiet: every other thread on the machine is put on
# SCHED_IDLE (it runs only when the benchmark leaves a core free) while COMMAND runs, then
# put back. For measuring on a development machine that other builds keep busy; a machine
# with nothing else running needs none of this. Needs root (chrt on other users' threads and
# the scheduler's autogroup switch).
#
#   bash bench/quiet.sh bash bench/overload.sh
#
# Autogroups are switched off meanwhile: with them on, each session keeps its share of the
# CPU whatever the scheduling class of its threads. Threads started by other work during the
# run are caught within a second. What SCHED_IDLE does not take away: memory bandwidth,
# caches and disk, which other work still uses.
set -uo pipefail
[[ $# -gt 0 ]] || { echo "usage: bench/quiet.sh COMMAND [ARG...]" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "bench/quiet.sh: needs root" >&2; exit 2; }
command -v chrt >/dev/null || { echo "bench/quiet.sh: chrt not found: apt-get install util-linux" >&2; exit 2; }

autogroup=/proc/sys/kernel/sched_autogroup_enabled
mine=$(ps -o sid= -p $$ | tr -d ' ')

# Every thread outside the sessions given (and outside init) onto SCHED_IDLE.
idle_others() {
    ps -eLo lwp=,pid=,sid=,cls= | awk -v keep=" $* " '$4 == "TS" && $2 != 1 && index(keep, " " $3 " ") == 0 { print $1 }' |
        while read -r thread; do chrt --idle -p 0 "$thread" 2>/dev/null; done
}
restore() {
    for _ in 1 2 3; do
        ps -eLo lwp=,cls= | awk '$2 == "IDL" { print $1 }' |
            while read -r thread; do chrt --other -p 0 "$thread" 2>/dev/null; done
        sleep 1
    done
    [[ -w $autogroup ]] && echo "$was" >"$autogroup"
}

was=$(cat "$autogroup" 2>/dev/null || echo 1)
[[ -w $autogroup ]] && echo 0 >"$autogroup"
trap restore EXIT
# Twice, a second apart, so that what the first pass missed is caught before the start.
idle_others "$mine"; sleep 1; idle_others "$mine"; sleep 1

setsid "$@" &
command_pid=$!
sleep 0.2
command_sid=$(ps -o sid= -p "$command_pid" | tr -d ' ')
# The sweep itself at the lowest normal priority: it must run, but not before the benchmark.
(
    renice -n 19 -p "$BASHPID" >/dev/null
    while kill -0 "$command_pid" 2>/dev/null; do idle_others "$mine" "$command_sid"; sleep 1; done
) &
sweeper=$!
wait "$command_pid"
status=$?
kill "$sweeper" 2>/dev/null
wait "$sweeper" 2>/dev/null
exit "$status"
