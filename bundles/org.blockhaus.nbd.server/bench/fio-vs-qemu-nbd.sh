#!/bin/bash
# Benchmark (not a test): our NBD server against qemu-nbd on the same 1 GiB qcow2, one run,
# fio's nbd engine over a unix socket. Prints MiB/s and IOPS per job and the ratio ours/qemu.
# Usage: bench/fio-vs-qemu-nbd.sh   (from bundles/org.blockhaus.nbd.server, after `mvn install`)
set -euo pipefail
export JAVA_HOME=${JAVA_HOME:-/usr/lib/jvm/temurin-25-jdk-amd64} MAVEN_OPTS="--sun-misc-unsafe-memory-access=allow"
HERE=$(cd "$(dirname "$0")/.." && pwd)
D=$(mktemp -d)
trap 'kill $OURS 2>/dev/null; [ -f $D/q.pid ] && kill $(cat $D/q.pid) 2>/dev/null; rm -rf $D' EXIT
RUNTIME=${RUNTIME:-10}
qemu-img create -q -f qcow2 $D/disk.qcow2 1G
qemu-io -f qcow2 -c 'write -P 0x5a 0 1G' $D/disk.qcow2 >/dev/null
cp $D/disk.qcow2 $D/ours.qcow2
(cd "$HERE" && mvn -q -B -o dependency:build-classpath -Dmdep.outputFile=$D/cp.txt -Dmdep.includeScope=test >/dev/null)
CP="$HERE/target/test-classes:$HERE/target/classes:$(cat $D/cp.txt)"
qemu-nbd --fork --persistent --shared=8 -f qcow2 --socket=$D/q.sock --pid-file=$D/q.pid -x disk $D/disk.qcow2
$JAVA_HOME/bin/java --enable-native-access=ALL-UNNAMED -cp "$CP" org.blockhaus.nbd.server.NbdServeMain qcow2 $D/ours.qcow2 $D/o.sock >$D/ours.log 2>&1 & OURS=$!
until [ -S $D/o.sock ]; do sleep 0.05; done
job() { # name rw bs depth socket
  fio --output-format=terse --terse-version=3 --name=$1 --ioengine=nbd --uri="nbd+unix:///disk?socket=$5" \
      --rw=$2 --bs=$3 --iodepth=$4 --size=1G --runtime=$RUNTIME --time_based --group_reporting | \
      grep ';' | tail -1 | awk -F';' '{printf "%.0f\n", $8}'
}
printf "%-26s %14s %14s %8s\n" job qemu-nbd blockhaus ratio
for spec in "randread-4k-qd1 randread 4k 1" "randread-4k-qd32 randread 4k 32" "seqread-1M-qd8 read 1M 8"; do
  set -- $spec
  qi=$(job $1 $2 $3 $4 $D/q.sock); oi=$(job $1 $2 $3 $4 $D/o.sock)
  printf "%-26s %8s IOPS %8s IOPS %7.2fx\n" $1 $qi $oi $(echo "$oi / $qi" | bc -l)
done
