#!/bin/sh
# tools/kafka/fetch-kafka.sh - fetches Apache Kafka's broker jars from Maven
# Central (through mvn, the machine's Maven) into var/kafka/libs, for
# tools/kafka/kafka-kraft.sh and the e2e Kafka test.
#
# Usage:
#   tools/kafka/fetch-kafka.sh            # into <repo>/var/kafka/libs
#   KAFKA_HOME=/some/dir tools/kafka/fetch-kafka.sh
# Idempotent: does nothing when the jars are already there (kafka_2.13-*.jar).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
home=${KAFKA_HOME:-$root/var/kafka}
libs=$home/libs
if ls "$libs"/kafka_2.13-*.jar >/dev/null 2>&1; then
    echo "fetch-kafka: jars already in $libs"
    exit 0
fi
mkdir -p "$libs"
command -v mvn >/dev/null || { echo "fetch-kafka: mvn not found (apt-get install maven)" >&2; exit 1; }
# -B batch mode, -q quiet.  Downloads go to Maven's own cache (~/.m2, or
# SHOP_MAVEN_REPO), so a fresh clone on the same machine fetches nothing again;
# the jars the broker runs from are copied under var/kafka/libs.
repo="${SHOP_MAVEN_REPO:-$HOME/.m2/repository}"
mvn -B -q -f "$here/pom.xml" -Dmaven.repo.local="$repo" \
    dependency:copy-dependencies -DoutputDirectory="$libs" -DincludeScope=runtime
n=$(ls "$libs"/*.jar | wc -l)
echo "fetch-kafka: $n jars in $libs"
