#!/usr/bin/env bash
# Login throughput and memory report for Tessera (DESIGN §6: the hashing pool).
#
#   bash benches/run.sh            (from anywhere; `make bench` runs it from the repo root)
#
# 1. the raw Argon2id rate with the service's parameters on all cores (benches/argon2_raw.rs),
#    measured before and after the load runs, the higher one being the ceiling;
# 2. the release binary on the embedded default (SQLite + dev KEK in a fresh temp dir):
#    spawn-to-ready time, idle RSS, then wrk POSTing /v1/login (benches/login.lua) at 8 and
#    at 32 connections, then peak RSS;
# 3. a summary with each figure against its target (OK / MISS).
#
# It is a report, not a test: a MISS does not fail it. It exits non-zero only when something
# could not be measured (build, server start, registration, wrk, ...).
#
# Login rates in the ratios count 2xx answers only: a shed request (503) is answered in
# microseconds and would otherwise inflate the rate. Between load runs the script waits until
# the server is idle again: wrk drops its in-flight requests when a run ends, and the hashing
# pool still works through their queued jobs, which would be shed-bait for the next run.
#
# The service's hashing threads run at nice +10, the raw bench at normal priority, so any
# other CPU load on the machine hurts the login figures far more than the raw one. The
# summary shows how many cores other processes used during each measurement ("foreign CPU");
# trust the ratios only when that is near zero.
#
# The server runs with TESSERA__RATE_LIMITS__ENABLED=false unless that is set: one account
# logging in at full speed would otherwise be answered 429 after a few attempts.
#
# Environment: BENCH_SECONDS (each wrk run, default 10 s; also the argon2 bench's duration
# when set, otherwise that one runs its own default of 5 s), and the service's own
# TESSERA__PASSWORD__* settings, which both the raw bench and the server read.
# Artefacts (server log, wrk outputs) are kept in target/bench-login/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

WRK_SECONDS="${BENCH_SECONDS:-10}"
WRK_THREADS=2
CONNS=(8 32)
RATIO_TARGET=0.9
IDLE_RSS_TARGET_MIB=15
PEAK_RSS_TARGET_MIB=64
READY_TIMEOUT_S=60
SETTLE_TIMEOUT_S=30
OUT_DIR="$PWD/target/bench-login"
# One account logging in thousands of times a second is exactly what the login rate limits
# (DESIGN §6) stop; this measures the hashing pool, so they are off unless the caller says so.
RATE_LIMITS_ENABLED="${TESSERA__RATE_LIMITS__ENABLED:-false}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

[[ "$WRK_SECONDS" =~ ^[0-9]+$ && "$WRK_SECONDS" -gt 0 ]] \
    || die "BENCH_SECONDS must be a whole number of seconds for wrk, got '$WRK_SECONDS'"

# --- tools -------------------------------------------------------------------------------
for tool in cargo curl python3 awk sed getconf; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
if ! command -v wrk >/dev/null; then
    log "installing wrk"
    if ! apt-get install -y wrk; then
        apt-get update
        apt-get install -y wrk
    fi
fi
command -v wrk >/dev/null || die "wrk is still missing after apt-get install"

# --- CPU accounting ----------------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"
# Busy jiffies of the whole machine (user, nice, system, irq, softirq, steal).
machine_busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
# CPU jiffies of a process (utime + stime) or, with "children", of its waited-for descendants.
# Fields are counted after the ")" closing the command name, which may contain spaces.
proc_cpu() { # proc_cpu PID [children]
    local rest
    rest="$(sed 's/^.*) //' "/proc/$1/stat")"
    if [[ "${2:-}" == children ]]; then
        awk '{ print $14 + $15 }' <<<"$rest"
    else
        awk '{ print $12 + $13 }' <<<"$rest"
    fi
}
now_ns() { date +%s%N; }
# A sample is "wall_ns machine_busy our_children server"; foreign CPU is what the machine
# did beyond this script's descendants (cargo, the bench, wrk, curl) and the server.
cpu_sample() {
    local server=0
    if [[ -n "${SERVER_PID:-}" ]] && [[ -r "/proc/$SERVER_PID/stat" ]]; then
        server="$(proc_cpu "$SERVER_PID")"
    fi
    echo "$(now_ns) $(machine_busy) $(proc_cpu $$ children) $server"
}
foreign_cores() { # foreign_cores "SAMPLE_BEFORE" "SAMPLE_AFTER"
    awk -v a="$1" -v b="$2" -v hz="$CLK_TCK" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        wall = (y[1] - x[1]) / 1e9
        other = (y[2] - x[2]) - (y[3] - x[3]) - (y[4] - x[4])
        if (other < 0) other = 0
        printf "%.2f", (wall > 0) ? other / hz / wall : 0
    }'
}

# --- build and raw argon2 rate -----------------------------------------------------------
log "cargo build --release --bin tessera"
cargo build --release --bin tessera
BIN="$PWD/target/release/tessera"
[[ -x "$BIN" ]] || die "no binary at $BIN"

# Run twice, before and after the load, and take the higher rate as the ceiling: on a shared
# machine other work can depress one of them (see "foreign CPU" in the summary).
run_raw() { # run_raw TAG -> sets RAW_RATE_<TAG>, RAW_FOREIGN_<TAG>, RAW_HUMAN_<TAG>
    local out s0 s1 rate
    log "cargo bench --bench argon2_raw ($1)"
    cargo bench --bench argon2_raw --no-run
    s0="$(cpu_sample)"
    out="$(cargo bench --bench argon2_raw)"
    s1="$(cpu_sample)"
    printf '%s\n' "$out"
    rate="$(printf '%s\n' "$out" | sed -n 's/^argon2_raw_verifies_per_sec=\([0-9.]*\)$/\1/p' | tail -n1)"
    [[ -n "$rate" ]] || die "the argon2_raw bench printed no argon2_raw_verifies_per_sec line"
    printf -v "RAW_RATE_$1" '%s' "$rate"
    printf -v "RAW_FOREIGN_$1" '%s' "$(foreign_cores "$s0" "$s1")"
    printf -v "RAW_HUMAN_$1" '%s' "$(printf '%s\n' "$out" | grep '^argon2id ' | tail -n1 || true)"
}
run_raw BEFORE

# --- server ------------------------------------------------------------------------------
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/tessera-bench.XXXXXX")"
mkdir -p "$OUT_DIR"
SERVER_LOG="$OUT_DIR/server.log"
: >"$SERVER_LOG"
SERVER_PID=""

cleanup() {
    local rc=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORKDIR"
    if [[ $rc -ne 0 && -s "$SERVER_LOG" ]]; then
        printf 'bench: failed (exit %s); last lines of the server log (%s):\n' "$rc" "$SERVER_LOG" >&2
        tail -n 20 "$SERVER_LOG" >&2 || true
    fi
    exit "$rc"
}
trap cleanup EXIT

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
BASE="http://127.0.0.1:$PORT"

proc_status() { # proc_status FIELD -> its (first) value in /proc/$SERVER_PID/status
    awk -v f="$1:" '$1 == f { print $2 }' "/proc/$SERVER_PID/status"
}
server_alive() { kill -0 "$SERVER_PID" 2>/dev/null; }

log "starting $BIN serve in $WORKDIR on port $PORT"
t0="$(now_ns)"
( cd "$WORKDIR" && TESSERA__SERVER__BIND=127.0.0.1 TESSERA__SERVER__PORT="$PORT" \
    TESSERA__RATE_LIMITS__ENABLED="$RATE_LIMITS_ENABLED" exec "$BIN" serve ) \
    >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

deadline=$(( t0 + READY_TIMEOUT_S * 1000000000 ))
while :; do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$BASE/readyz" || true)"
    if [[ "$code" == 200 ]]; then
        ready="$(now_ns)"
        break
    fi
    server_alive || die "the server exited before it was ready"
    (( $(now_ns) < deadline )) || die "the server was not ready within ${READY_TIMEOUT_S}s (last /readyz: $code)"
    sleep 0.005
done
READY_MS="$(awk -v a="$t0" -v b="$ready" 'BEGIN { printf "%.0f", (b - a) / 1e6 }')"
log "ready after ${READY_MS} ms"

sleep 1
IDLE_RSS_KIB="$(proc_status VmRSS)"
IDLE_ANON_KIB="$(proc_status RssAnon)"
IDLE_FILE_KIB="$(proc_status RssFile)"
STARTUP_HWM_KIB="$(proc_status VmHWM)"
[[ -n "$IDLE_RSS_KIB" ]] || die "cannot read VmRSS of pid $SERVER_PID"
THREADS_IDLE="$(proc_status Threads)"

# Waits until the server has used less than 5% of a core over a quarter second.
wait_idle() {
    local start prev cur
    start="$(now_ns)"
    prev="$(proc_cpu "$SERVER_PID")"
    while :; do
        sleep 0.25
        server_alive || die "the server died"
        cur="$(proc_cpu "$SERVER_PID")"
        if (( (cur - prev) * 100 * 4 <= 5 * CLK_TCK )); then
            break
        fi
        prev="$cur"
        (( $(now_ns) - start < SETTLE_TIMEOUT_S * 1000000000 )) \
            || die "the server was still busy ${SETTLE_TIMEOUT_S}s after a load run"
    done
    awk -v a="$start" -v b="$(now_ns)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'
}

# --- one account -------------------------------------------------------------------------
export LOGIN_EMAIL="bench-$$@example.com"
export LOGIN_PASSWORD="wrk-bench Tessera 2026 horse staple $$"
body="$(python3 -c 'import json, os; print(json.dumps({"email": os.environ["LOGIN_EMAIL"], "password": os.environ["LOGIN_PASSWORD"]}))')"
code="$(curl -s -o "$WORKDIR/register.json" -w '%{http_code}' --max-time 30 \
    -H 'Content-Type: application/json' -d "$body" "$BASE/v1/users")"
[[ "$code" == 201 ]] || die "registration answered $code: $(cat "$WORKDIR/register.json")"
code="$(curl -s -o "$WORKDIR/login.json" -w '%{http_code}' --max-time 30 \
    -H 'Content-Type: application/json' -d "$body" "$BASE/v1/login")"
[[ "$code" == 200 ]] || die "a single login answered $code: $(cat "$WORKDIR/login.json")"
log "registered $LOGIN_EMAIL; a single login answers 200"

# --- load --------------------------------------------------------------------------------
declare -A RPS_ALL RPS_OK OK NON2XX SOCKERR STATUSES P50 P99 FOREIGN SETTLE
for c in "${CONNS[@]}"; do
    SETTLE[$c]="$(wait_idle)"
    log "wrk -t$WRK_THREADS -c$c -d${WRK_SECONDS}s POST /v1/login (server idle after ${SETTLE[$c]} s)"
    out="$OUT_DIR/wrk-c$c.txt"
    s0="$(cpu_sample)"
    wrk -t"$WRK_THREADS" -c"$c" -d"${WRK_SECONDS}s" --timeout 30s --latency \
        -s benches/login.lua "$BASE/v1/login" >"$out" 2>&1 \
        || { cat "$out" >&2; die "wrk failed at $c connections"; }
    s1="$(cpu_sample)"
    FOREIGN[$c]="$(foreign_cores "$s0" "$s1")"
    cat "$out"
    server_alive || die "the server died during the run at $c connections"
    RPS_ALL[$c]="$(awk '$1 == "Requests/sec:" { print $2 }' "$out")"
    [[ -n "${RPS_ALL[$c]}" ]] || die "no Requests/sec in the wrk output at $c connections"
    # "  634 requests in 10.04s, 571.47KB read" (wrk prints ms / s / m / h)
    duration="$(awk '$2 == "requests" && $3 == "in" {
        d = $4; sub(/,$/, "", d)
        if (d ~ /ms$/) { sub(/ms$/, "", d); d /= 1000 }
        else if (d ~ /m$/) { sub(/m$/, "", d); d *= 60 }
        else if (d ~ /h$/) { sub(/h$/, "", d); d *= 3600 }
        else { sub(/s$/, "", d) }
        print d }' "$out")"
    OK[$c]="$(sed -n 's/^ok_2xx=\([0-9]*\)$/\1/p' "$out")"
    NON2XX[$c]="$(sed -n 's/^non_2xx=\([0-9]*\)$/\1/p' "$out")"
    [[ -n "$duration" && -n "${OK[$c]}" && -n "${NON2XX[$c]}" ]] \
        || die "cannot read the duration or the status counts of the run at $c connections"
    RPS_OK[$c]="$(awk -v n="${OK[$c]}" -v d="$duration" 'BEGIN { printf "%.2f", n / d }')"
    STATUSES[$c]="$(sed -n 's/^status_counts //p' "$out")"
    SOCKERR[$c]="$(sed -n 's/^ *Socket errors: *//p' "$out")"
    P50[$c]="$(awk '$1 == "50%" { print $2 }' "$out")"
    P99[$c]="$(awk '$1 == "99%" { print $2 }' "$out")"
done

PEAK_RSS_KIB="$(proc_status VmHWM)"
END_RSS_KIB="$(proc_status VmRSS)"
END_ANON_KIB="$(proc_status RssAnon)"
[[ -n "$PEAK_RSS_KIB" ]] || die "cannot read VmHWM of pid $SERVER_PID"
THREADS_END="$(proc_status Threads)"

wait_idle >/dev/null
run_raw AFTER
RAW_RATE="$(awk -v a="$RAW_RATE_BEFORE" -v b="$RAW_RATE_AFTER" 'BEGIN { print (b + 0 > a + 0) ? b : a }')"

LOG_ERRORS="$(grep -c '"level":"ERROR"' "$SERVER_LOG" || true)"
LOG_WARNS="$(grep -c '"level":"WARN"' "$SERVER_LOG" || true)"
LOG_SHED="$(grep -c 'request shed' "$SERVER_LOG" || true)"
LOGIN_OK_LOGGED="$(grep -c '"login succeeded"' "$SERVER_LOG" || true)"

# --- summary -----------------------------------------------------------------------------
mark() { # mark VALUE OP TARGET -> OK / MISS
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
        ok = (op == ">=") ? (v + 0 >= t + 0) : (v + 0 <= t + 0)
        print ok ? "OK" : "MISS"
    }'
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0) printf "%.3f", a / b; else print "nan" }'; }

echo
echo "================ Tessera login bench summary ================"
echo "machine:        $(nproc) core(s); wrk $WRK_THREADS threads, ${WRK_SECONDS}s per run, 2xx-only rates in the ratios"
echo "server:         rate limits enabled=$RATE_LIMITS_ENABLED (TESSERA__RATE_LIMITS__ENABLED)"
echo "argon2 params:  m=${TESSERA__PASSWORD__MEMORY_KIB:-19456} KiB t=${TESSERA__PASSWORD__ITERATIONS:-2} p=${TESSERA__PASSWORD__PARALLELISM:-1}; service hash threads=${TESSERA__PASSWORD__THREADS:-0} (0 = per core), queue=${TESSERA__PASSWORD__QUEUE:-32}"
echo "raw argon2:     $RAW_RATE verifies/s (the higher of a run before and one after the load)"
echo "  before:       $RAW_RATE_BEFORE/s   [foreign CPU $RAW_FOREIGN_BEFORE cores]  $RAW_HUMAN_BEFORE"
echo "  after:        $RAW_RATE_AFTER/s   [foreign CPU $RAW_FOREIGN_AFTER cores]  $RAW_HUMAN_AFTER"
for c in "${CONNS[@]}"; do
    r="$(ratio "${RPS_OK[$c]}" "$RAW_RATE")"
    printf 'login c=%-3s     %s ok/s  ratio %s (target >= %s) %s   [foreign CPU %s cores]\n' \
        "$c" "${RPS_OK[$c]}" "$r" "$RATIO_TARGET" "$(mark "$r" '>=' "$RATIO_TARGET")" "${FOREIGN[$c]}"
    printf '                all answers %s req/s; latency p50 %s p99 %s; statuses: %s; non-2xx: %s%s\n' \
        "${RPS_ALL[$c]}" "${P50[$c]:-?}" "${P99[$c]:-?}" "${STATUSES[$c]:-none}" "${NON2XX[$c]}" \
        "${SOCKERR[$c]:+; socket errors: ${SOCKERR[$c]}}"
done
printf 'idle RSS:       %s MiB (target <= %s MiB) %s   [anon %s MiB, file-backed %s MiB]\n' \
    "$(mib "$IDLE_RSS_KIB")" "$IDLE_RSS_TARGET_MIB" "$(mark "$(mib "$IDLE_RSS_KIB")" '<=' "$IDLE_RSS_TARGET_MIB")" \
    "$(mib "$IDLE_ANON_KIB")" "$(mib "$IDLE_FILE_KIB")"
printf 'peak RSS:       %s MiB (target <= %s MiB) %s   [peak by idle time %s MiB; at end %s MiB, anon %s MiB]\n' \
    "$(mib "$PEAK_RSS_KIB")" "$PEAK_RSS_TARGET_MIB" "$(mark "$(mib "$PEAK_RSS_KIB")" '<=' "$PEAK_RSS_TARGET_MIB")" \
    "$(mib "$STARTUP_HWM_KIB")" "$(mib "$END_RSS_KIB")" "$(mib "$END_ANON_KIB")"
printf 'start-to-ready: %s ms (spawn to first 200 from /readyz, 5 ms polling)\n' "$READY_MS"
printf 'threads:        %s idle, %s after load\n' "$THREADS_IDLE" "$THREADS_END"
printf 'server log:     %s ERROR, %s WARN (%s "request shed"); %s "login succeeded" (%s)\n' \
    "$LOG_ERRORS" "$LOG_WARNS" "$LOG_SHED" "$LOGIN_OK_LOGGED" "$SERVER_LOG"
total_non2xx=0
max_foreign="$(awk -v a="$RAW_FOREIGN_BEFORE" -v b="$RAW_FOREIGN_AFTER" 'BEGIN { print (b + 0 > a + 0) ? b : a }')"
for c in "${CONNS[@]}"; do
    total_non2xx=$(( total_non2xx + NON2XX[$c] ))
    max_foreign="$(awk -v a="$max_foreign" -v b="${FOREIGN[$c]}" 'BEGIN { print (b + 0 > a + 0) ? b : a }')"
done
if (( total_non2xx > 0 )); then
    echo "WARNING:        $total_non2xx non-2xx login answers (shedding or errors), see the statuses above"
fi
if grep -qE '(^| )429=' <<<"${STATUSES[*]}"; then
    echo "WARNING:        429 answers: the login rate limits were hit (TESSERA__RATE_LIMITS__*)"
fi
if (( LOG_ERRORS > 0 )); then
    echo "WARNING:        the server logged errors:"
    grep '"level":"ERROR"' "$SERVER_LOG" | head -n 5
fi
if awk -v f="$max_foreign" 'BEGIN { exit !(f + 0 >= 0.2) }'; then
    echo "NOTE:           other processes used up to $max_foreign cores during the measurements; the"
    echo "                nice +10 hashing threads yield to them (the raw bench runs at nice 0), so"
    echo "                the ratios are unreliable: rerun on a quiet machine"
fi
echo "============================================================="
