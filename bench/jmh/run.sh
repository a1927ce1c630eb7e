#!/usr/bin/env bash
# JMH read-path benchmarks (not tests). Needs the main build installed (./run-tests or ./blk) and
# qemu-img/qemu-io. Writes bench/jmh/RESULTS.md with the machine it ran on.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../../scripts/jdk.sh"
blk_find_jdk
cd "$here"
mvn -q -B package
cp="target/classes:$(cat target/classpath.txt)"
"$JAVA_HOME/bin/java" --enable-native-access=ALL-UNNAMED -cp "$cp" org.openjdk.jmh.Main -rf text -rff target/jmh.txt "$@"
{
  echo "# JMH read path, $(date -u +%Y-%m-%d)"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(uptime | sed 's/.*load average: //'); $("$JAVA_HOME/bin/java" -version 2>&1 | head -1)"
  echo
  echo '```'
  cat target/jmh.txt
  echo '```'
} > RESULTS.md
cat RESULTS.md
