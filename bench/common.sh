# Sourced by the bench/*.sh scripts: the JDK, the work directory and the mixed test image.
# Sets: here (the project root), work (the work directory: the script's first argument or
# bench/out), warm (the command run before each timed run).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$here/scripts/jdk.sh"
blk_find_jdk
work="${1:-$here/bench/out}"
mkdir -p "$work"

# bench_warm GiB: sets `warm` to touch that much tmpfs. This VM's balloon reports freed guest pages
# to the host (virtio-balloon free page reporting, visible in /sys/bus/virtio/devices/*/features):
# the first write into such a page faults in the host, invisibly to the guest, and a convert that
# happened to get those pages for its page cache took 2-4 s of system time instead of 0.4 s, for
# qemu-img and blk alike, at random. Touching tmpfs just before each run hands both tools pages the
# host still backs. The step is not timed and is the same for both; BENCH_NO_WARM=1 shows the raw
# behaviour.
bench_warm() {
  warm="head -c ${1}G /dev/zero > /dev/shm/blk-bench-warm; rm -f /dev/shm/blk-bench-warm"
  [ -z "${BENCH_NO_WARM:-}" ] || warm=true
}

# bench_mixed GiB PATH: a raw image of 1 MiB chunks cycling random / zeros (left as a hole, like a
# fresh disk's free space) / random / text, made once.
bench_mixed() {
  [ -f "$2" ] || python3 - "$1" "$2" <<'PY'
import os, sys
MiB = 1 << 20
n = int(sys.argv[1]) * 1024
text = (b"Blockhaus benchmark text, compressible and not zero. " * 20000)[:MiB]
with open(sys.argv[2], "wb") as f:
    for i in range(n):
        kind = i % 4
        if kind in (0, 2):
            f.write(os.urandom(MiB))
        elif kind == 1:
            f.seek(MiB, 1)
        else:
            f.write(text)
    f.truncate(n * MiB)
PY
}
