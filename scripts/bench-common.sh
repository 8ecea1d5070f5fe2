# Shared by scripts/bench-ingest, scripts/bench-reconcile, scripts/bench-startup and
# scripts/bench-ha; sourced, not run. Parses the common flags, builds the binaries and describes
# the machine.
#
#   --quick      a seconds-long smoke run (CI): tiny sizes, debug build, results under
#                TARGET/bench-smoke/ instead of benchmarks/
#   --release    build and run the release binaries (the default without --quick)
#   --debug      build and run the debug binaries (the default with --quick)
#   --out DIR    where the tables (and the chart) go
#
# TARGET is the folder cargo builds into (scripts/target-dir: target/, or CARGO_TARGET_DIR, or
# build.target-dir); the binaries run from there. Smoke results and the cached benchmark
# databases live under it too, on purpose: they are build products (`cargo clean` removes
# them), and whoever moves the target folder out of the repository (a shared or bigger disk)
# takes the 1 GB database with it. The tables of full runs stay in benchmarks/, committed.
#
# shellcheck shell=bash disable=SC2034 # bin, bench, pin_*, pinning: for the sourcing scripts

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TERM_COLOR=never
target_dir=$(scripts/target-dir)

quick=0
profile=""
out=""
extra_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=1 ;;
        --release) profile=release ;;
        --debug) profile=debug ;;
        --out) out="$2"; shift ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) extra_args+=("$1") ;;
    esac
    shift
done
if [[ -z "$profile" ]]; then
    if [[ $quick -eq 1 ]]; then profile=debug; else profile=release; fi
fi
if [[ -z "$out" ]]; then
    if [[ $quick -eq 1 ]]; then out="$target_dir/bench-smoke"; else out=benchmarks; fi
fi
mkdir -p "$out"

echo "== building ($profile)" >&2
if [[ $profile == release ]]; then
    cargo build --release --locked --bins >&2
else
    cargo build --locked --bins >&2
fi
bin="$target_dir/$profile/orderwatch"
bench="$target_dir/$profile/orderwatch-bench"

# Processes other than ours using a CPU right now (compilers, other tests), one line.
busy_processes() {
    ps -eo pcpu=,comm= --sort=-pcpu 2>/dev/null \
        | awk '$1 >= 10 && $2 !~ /^(orderwatch|orderwatch-bench|ps|awk|bash|taskset)$/ { printf "%s%s (%s%%)", sep, $2, $1; sep=", " }'
}

# One paragraph: cores, CPU model, memory, the disk under the temp folder, load, build.
machine_note() {
    local tmp="${TMPDIR:-/tmp}"
    local cpu mem disk fstype rota load busy
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    mem=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || true)
    disk=$(df -P "$tmp" 2>/dev/null | awk 'NR == 2 { print $1 }')
    fstype=$(df -PT "$tmp" 2>/dev/null | awk 'NR == 2 { print $2 }')
    rota=""
    if command -v lsblk >/dev/null 2>&1 && [[ -n "$disk" ]]; then
        rota=$(lsblk -dno ROTA "$disk" 2>/dev/null | awk '{ print "lsblk ROTA=" $1 }')
    fi
    # What one durable commit costs at least here: a 4 KiB O_DSYNC write (median-free, mean of 200).
    local probe="$tmp/orderwatch-bench-dsync.$$" dsync
    dsync=$(dd if=/dev/zero of="$probe" bs=4k count=200 oflag=dsync 2>&1 \
        | awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") printf "%.2f ms", $(i-1) * 1000 / 200 }')
    rm -f "$probe"
    load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || true)
    busy=$(busy_processes)
    echo "Machine: $(nproc) cores (${cpu:-unknown CPU}), ${mem:-? GiB} RAM; databases in $tmp on $disk (${fstype:-?}${rota:+, $rota})${dsync:+, one 4 KiB O_DSYNC write $dsync}; Linux $(uname -r); $profile build; load average $load at start${busy:+; other processes busy at start: $busy}."
}

# Server on CPU 0, load generator on CPU 1, when taskset exists and there are two CPUs.
if command -v taskset >/dev/null 2>&1 && [[ $(nproc) -ge 2 ]]; then
    pin_server=(taskset -c 0)
    pin_client=(taskset -c 1)
    pinning="server pinned to CPU 0 and load generator to CPU 1 (taskset)"
else
    pin_server=()
    pin_client=()
    pinning="NOT pinned (taskset missing or fewer than 2 CPUs): server and load generator share the CPUs"
fi
