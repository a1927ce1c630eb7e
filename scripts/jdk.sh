# Finds JDK 25 for ./blk and ./run-tests (sourced, not run). Sets JAVA_HOME or explains what to
# install. Reads each JDK's release file, so the check costs no JVM start.

blk_is_jdk25() {
    [ -x "$1/bin/java" ] && [ -x "$1/bin/javac" ] || return 1
    if [ -f "$1/release" ]; then
        grep -q '^JAVA_VERSION="25[."]' "$1/release" || grep -q '^JAVA_VERSION="25"' "$1/release"
    else
        "$1/bin/java" -version 2>&1 | head -n 1 | grep -q '"25[."]\|"25"'
    fi
}

blk_find_jdk() {
    if [ -n "${JAVA_HOME:-}" ] && blk_is_jdk25 "$JAVA_HOME"; then
        export JAVA_HOME
        return 0
    fi
    local d
    for d in /usr/lib/jvm/*25*; do
        if [ -d "$d" ] && blk_is_jdk25 "$d"; then
            export JAVA_HOME="$d"
            return 0
        fi
    done
    {
        echo "Blockhaus needs JDK 25 (found none: JAVA_HOME=${JAVA_HOME:-unset}, nothing in /usr/lib/jvm/*25*)."
        echo "Install one, e.g. 'apt-get install temurin-25-jdk' (Adoptium's apt repository),"
        echo "or set JAVA_HOME to a JDK 25."
    } >&2
    return 1
}

blk_find_maven() {
    command -v mvn >/dev/null 2>&1 && return 0
    echo "Blockhaus builds with Maven 3.8 or newer: install it ('apt-get install maven')." >&2
    return 1
}

# Java 25 warns about sun.misc.Unsafe in Maven 3.8 and Felix; the flag keeps their output clean.
blk_maven_opts() {
    case " ${MAVEN_OPTS:-} " in
        *sun-misc-unsafe-memory-access*) ;;
        *) export MAVEN_OPTS="${MAVEN_OPTS:+$MAVEN_OPTS }--sun-misc-unsafe-memory-access=allow" ;;
    esac
}
