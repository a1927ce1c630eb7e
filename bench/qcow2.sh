#!/usr/bin/env bash
# Benchmark (not a test): qcow2 work side by side with qemu-img 7.2, in one run, on the 2 GiB
# mixed image (bench/common.sh). Writes bench/RESULTS-qcow2.md with the machine it ran on.
# Usage: bench/qcow2.sh [workdir]    (needs hyperfine, qemu-img; ./blk builds itself first)
. "$(dirname "$0")/common.sh"
src="$work/mixed-2g.raw"
bench_mixed 2 "$src"
blk="$here/blk"
"$blk" info "$src" >/dev/null
export BLK_NO_BUILD=1
"$blk" info "$src" >/dev/null; sleep 15 # the AOT cache is assembled after the first run
load_start="$(uptime | sed 's/.*load average: //')"
cd "$work"
qemu-img convert -f raw -O qcow2 "$src" src.qcow2
qemu-img convert -f raw -O qcow2 -c "$src" srcz.qcow2

bench_warm 3 # see bench/common.sh
run() { # name, qemu command, blk command, files to remove before each run
  local name="$1" q="$2" b="$3" rmq="$4" rmb="$5"
  hyperfine --warmup 1 --runs "${BENCH_RUNS:-5}" --export-markdown "$work/$name.md" \
    --prepare "rm -f $rmq; sync; $warm" --prepare "rm -f $rmb; sync; $warm" \
    -n "qemu-img $name" "$q" -n "blk $name" "$b" >/dev/null
}
run raw-to-qcow2 "qemu-img convert -f raw -O qcow2 $src q.qcow2" "$blk convert -f raw -O qcow2 $src b.qcow2" q.qcow2 b.qcow2
run qcow2-to-raw "qemu-img convert -f qcow2 -O raw src.qcow2 q.raw" "$blk convert -f qcow2 -O raw src.qcow2 b.raw" q.raw b.raw
run qcow2-to-qcow2 "qemu-img convert -f qcow2 -O qcow2 src.qcow2 q2.qcow2" "$blk convert -f qcow2 -O qcow2 src.qcow2 b2.qcow2" q2.qcow2 b2.qcow2
run compress-zlib "qemu-img convert -f raw -O qcow2 -c $src qz.qcow2" "$blk convert -f raw -O qcow2 -c $src bz.qcow2" qz.qcow2 bz.qcow2
if "$blk" create -f qcow2 -o compression_type=zstd zstd-probe.qcow2 1M >/dev/null 2>&1; then
  run compress-zstd "qemu-img convert -f raw -O qcow2 -c -o compression_type=zstd $src qzs.qcow2" \
    "$blk convert -f raw -O qcow2 -c -o compression_type=zstd $src bzs.qcow2" qzs.qcow2 bzs.qcow2
fi
# a three-deep chain for map
qemu-img create -f qcow2 -b src.qcow2 -F qcow2 mid.qcow2 >/dev/null
qemu-io -f qcow2 -c 'write -P 7 100M 64M' mid.qcow2 >/dev/null
qemu-img create -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 >/dev/null
qemu-io -f qcow2 -c 'write -P 8 1G 32M' top.qcow2 >/dev/null
hyperfine --warmup 1 --runs 5 --export-markdown "$work/map.md" -n "qemu-img map chain" \
  "qemu-img map --output=json top.qcow2" -n "blk map chain" "$blk map --output=json top.qcow2" >/dev/null
cmp <(qemu-img map --output=json top.qcow2) <("$blk" map --output=json top.qcow2) && echo "map outputs equal"
# random 4k reads on the fully written qcow2, depth 1 and 32 (qemu-img bench's own workload)
hyperfine --warmup 1 --runs 3 --export-markdown "$work/bench-qd1.md" -n "qemu-img bench qd1" \
  "qemu-img bench -f qcow2 -c 200000 -d 1 -S 1052672 src.qcow2" -n "blk bench qd1" \
  "$blk bench -f qcow2 -c 200000 -d 1 -S 1052672 src.qcow2" >/dev/null
hyperfine --warmup 1 --runs 3 --export-markdown "$work/bench-qd32.md" -n "qemu-img bench qd32" \
  "qemu-img bench -f qcow2 -c 400000 -d 32 -S 1052672 src.qcow2" -n "blk bench qd32" \
  "$blk bench -f qcow2 -c 400000 -d 32 -S 1052672 src.qcow2" >/dev/null
# check of a 256 GiB metadata-preallocated image
[ -f big.qcow2 ] || qemu-img create -f qcow2 -o preallocation=metadata big.qcow2 256G >/dev/null
hyperfine --warmup 1 --runs 3 --export-markdown "$work/check.md" -n "qemu-img check 256G" \
  "qemu-img check big.qcow2" -n "blk check 256G" "$blk check big.qcow2" >/dev/null
for f in b.qcow2 b2.qcow2 bz.qcow2 bzs.qcow2; do [ ! -f "$f" ] || qemu-img check -q "$f"; done
qemu-img compare -q b.qcow2 "$src" && qemu-img compare -q bz.qcow2 "$src" && qemu-img compare -q b.raw "$src"
qemu-img compare -q b2.qcow2 "$src" && { [ ! -f bzs.qcow2 ] || qemu-img compare -q bzs.qcow2 "$src"; }
# start-up against data path: the launcher's own timestamps (-Dblk.verbose), best of three
split() { # name, blk arguments...
  local name="$1" best=""; shift
  for i in 1 2 3; do
    rm -f split.out; sync; eval "$warm"
    local t0 line ready fin total
    t0=$(date +%s%N)
    line=$(BLK_JAVA_OPTS=-Dblk.verbose=true "$blk" "$@" 2>&1 >/dev/null | tr '\n' ' ')
    total=$(( ($(date +%s%N) - t0) / 1000000 ))
    ready=$(sed -n 's/.*blk: *\([0-9.]*\) ms shell service ready.*/\1/p' <<<"$line")
    fin=$(sed -n 's/.*blk: *\([0-9.]*\) ms command done.*/\1/p' <<<"$line")
    local data=${fin%.*}; data=$((data - ${ready%.*}))
    if [ -z "$best" ] || [ "$total" -lt "${best%% *}" ]; then best="$total $((total - data)) $data"; fi
  done
  set -- $best
  echo "| $name | $1 | $2 | $3 |"
}
{
  echo "| convert | total [ms] | start-up and exit [ms] | data path [ms] |"
  echo "|:---|---:|---:|---:|"
  split raw-to-qcow2 convert -f raw -O qcow2 "$src" split.out
  split qcow2-to-raw convert -f qcow2 -O raw src.qcow2 split.out
  split qcow2-to-qcow2 convert -f qcow2 -O qcow2 src.qcow2 split.out
  split compress-zlib convert -f raw -O qcow2 -c "$src" split.out
  split compress-zstd convert -f raw -O qcow2 -c -o compression_type=zstd "$src" split.out
} > "$work/split.md"
rm -f split.out
{
  echo "# qcow2 side by side with qemu-img, $(date -u +%Y-%m-%d)"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB RAM; load average at the start: $load_start, at the end: $(uptime | sed 's/.*load average: //'); $(qemu-img --version | head -1); $("$JAVA_HOME/bin/java" -version 2>&1 | head -1)"
  echo "Input: 2 GiB raw, 1 MiB chunks cycling random / zeros / random / text; page cache warm; $( [ -n "${BENCH_NO_WARM:-}" ] && echo "no" || echo "3 GiB of tmpfs touched") before each timed run (see bench/qcow2.sh)."
  for f in raw-to-qcow2 qcow2-to-raw qcow2-to-qcow2 compress-zlib compress-zstd map bench-qd1 bench-qd32 check; do
    [ -f "$work/$f.md" ] && { echo; echo "## $f"; cat "$work/$f.md"; }
  done
  echo
  echo "## Where blk's time goes (one run each, best of three; the launcher's -Dblk.verbose timestamps)"
  echo
  cat "$work/split.md"
  echo
  echo "Every image blk wrote passed qemu-img check and compared equal to the source."
  [ ! -f "$here/bench/PROFILE-qcow2.md" ] || { echo; cat "$here/bench/PROFILE-qcow2.md"; }
} > "$here/bench/RESULTS-qcow2.md"
cat "$here/bench/RESULTS-qcow2.md"
