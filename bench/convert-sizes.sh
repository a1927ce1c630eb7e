#!/usr/bin/env bash
# Benchmark (not a test): the three uncompressed qcow2 converts of bench/qcow2.sh, side by side
# with qemu-img, on mixed images of several sizes (default 2, 4 and 6 GiB), to separate blk's fixed
# cost per process (JVM, Felix and SCR start-up and exit) from the cost per byte.
# Usage: bench/convert-sizes.sh [workdir]   (BENCH_SIZES="2 4 6" in GiB, BENCH_RUNS=3)
# Writes bench/RESULTS-convert-sizes.md. Needs hyperfine and qemu-img; page cache room for the
# largest image and its copy.
. "$(dirname "$0")/common.sh"
blk="$here/blk"
sizes="${BENCH_SIZES:-2 4 6}"
"$blk" info /dev/null >/dev/null 2>&1 || true # builds if needed, trains the AOT cache
sleep 15
export BLK_NO_BUILD=1
load_start="$(uptime | sed 's/.*load average: //')"
cd "$work"
out="$work/sizes.md"
{
  echo "| size | convert | qemu-img min [ms] | blk min [ms] | ratio (qemu-img / blk) |"
  echo "|---:|:---|---:|---:|---:|"
} > "$out"
for g in $sizes; do
  src="$work/mixed-${g}g.raw"
  bench_mixed "$g" "$src"
  # fresh host backing for the written pages (free page reporting; see bench/common.sh): one and a
  # half times the image's size, at least 3 GiB (with 3 GiB, 4 GiB converts took 1-4 s at random,
  # for both tools)
  bench_warm $(( g * 3 / 2 > 3 ? g * 3 / 2 : 3 ))
  cat "$src" >/dev/null # page cache warm, as for qemu-img
  qemu-img convert -f raw -O qcow2 "$src" "src-${g}g.qcow2"
  for kind in raw-to-qcow2 qcow2-to-raw qcow2-to-qcow2; do
    case $kind in
      raw-to-qcow2) args="-f raw -O qcow2 $src" ;;
      qcow2-to-raw) args="-f qcow2 -O raw src-${g}g.qcow2" ;;
      qcow2-to-qcow2) args="-f qcow2 -O qcow2 src-${g}g.qcow2" ;;
    esac
    hyperfine --warmup 1 --runs "${BENCH_RUNS:-3}" --export-json "$work/sizes-$kind-$g.json" \
      --prepare "rm -f q.out; sync; $warm" --prepare "rm -f b.out; sync; $warm" \
      -n qemu-img "qemu-img convert $args q.out" -n blk "$blk convert $args b.out" >/dev/null
    qemu-img compare -q b.out q.out
    python3 - "$work/sizes-$kind-$g.json" "$g" "$kind" >> "$out" <<'PY'
import json, sys
r = {x["command"]: min(x["times"]) * 1000 for x in json.load(open(sys.argv[1]))["results"]}
q, b = r["qemu-img"], r["blk"]
print(f"| {sys.argv[2]} GiB | {sys.argv[3]} | {q:.0f} | {b:.0f} | {q / b:.2f}x |")
PY
    rm -f q.out b.out
  done
  rm -f "src-${g}g.qcow2"
done
{
  echo "# Uncompressed qcow2 converts by image size, $(date -u +%Y-%m-%d)"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB RAM; load average at the start: $load_start, at the end: $(uptime | sed 's/.*load average: //'); $(qemu-img --version | head -1); $("$JAVA_HOME/bin/java" -version 2>&1 | head -1)"
  echo "Input: raw images of 1 MiB chunks cycling random / zeros / random / text (a quarter holes); page cache warm; best of ${BENCH_RUNS:-3} runs each after one warm-up, $( [ -n "${BENCH_NO_WARM:-}" ] && echo "no tmpfs touched" || echo "one and a half times the image size (at least 3 GiB) of tmpfs touched") before each run. Every blk output compared equal to qemu-img's."
  echo
  cat "$out"
} > "$here/bench/RESULTS-convert-sizes.md"
cat "$here/bench/RESULTS-convert-sizes.md"
