#!/usr/bin/env bash
# Benchmark (not a test): ./blk convert against qemu-img convert, raw to raw, on a 2 GiB image
# of 1 MiB chunks cycling random / zeros / random / text; plus start-up of `info` for both.
# Usage: bench/convert-raw.sh [workdir]   (needs hyperfine and qemu-img; writes bench/RESULTS-convert-raw.md)
. "$(dirname "$0")/common.sh"
src="$work/mixed-2g.raw"
bench_mixed 2 "$src"
"$here/blk" info "$src" >/dev/null   # builds if needed, trains the JVM's AOT cache
sleep 15                              # which is assembled in the background after that first run
load_start="$(uptime | sed 's/.*load average: //')"
export BLK_NO_BUILD=1                 # timed runs must never include a build
bench_warm 3 # fresh host backing for the pages both tools write into (see bench/common.sh)
hyperfine --warmup 1 --runs 5 --export-markdown "$work/convert.md" \
  --prepare "rm -f $work/q.raw; sync; $warm" --prepare "rm -f $work/b.raw; sync; $warm" \
  "qemu-img convert -f raw -O raw $src $work/q.raw" \
  "$here/blk convert -f raw -O raw $src $work/b.raw"
cmp "$work/q.raw" "$work/b.raw"
hyperfine --warmup 2 --runs 10 --export-markdown "$work/info.md" \
  "qemu-img info $src" "$here/blk info $src"
rss() { /usr/bin/time -f "%M" "$@" 2>&1 >/dev/null | tail -1; }
{
  echo "# convert raw->raw and info start-up, $(date -u +%Y-%m-%d)"
  echo
  echo "Machine: $(nproc) cores (load average at the start: $load_start, at the end: $(uptime | sed 's/.*load average: //')), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB RAM; $(qemu-img --version | head -1); $("$JAVA_HOME/bin/java" -version 2>&1 | head -1)"
  echo
  echo "## convert (2 GiB: random / zeros / random / text, 1 MiB chunks; page cache warm for both)"
  cat "$work/convert.md"
  echo
  echo "## info start-up (wall time)"
  cat "$work/info.md"
  echo
  echo "Peak RSS of info: qemu-img $(rss qemu-img info "$src") KiB, blk $(rss "$here/blk" info "$src") KiB"
} > "$here/bench/RESULTS-convert-raw.md"
cat "$here/bench/RESULTS-convert-raw.md"
