#!/bin/bash
# build-wheelhouse.sh PYTHON SOURCE OUT ARCH GLIBC PYTHON_VERSION
#
# Builds the project's wheel from SOURCE and downloads every dependency as a wheel for Linux on
# ARCH (aarch64, x86_64) with glibc GLIBC (2.36: Debian bookworm) and CPython PYTHON_VERSION
# (3.11) into OUT, replacing what OUT held
# only when something differs. Prints "wheelhouse changed" then, and always "digest SHA256"
# (of the sorted list of wheel digests): the nodes reinstall when it changes.
set -euo pipefail
python=$1 source=$2 out=$3 arch=$4 glibc=$5 pyversion=$6
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# Reproducible archives: a rebuild of the same source gives the same bytes.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}
export PIP_DISABLE_PIP_VERSION_CHECK=1
# 1. The project and, for dependencies published only as source, pure-Python wheels (built for
#    this machine, usable anywhere: py3-none-any).
"$python" -m pip wheel --quiet --wheel-dir "$stage/built" "$source"
# 2. Everything for the nodes' platform, binary only, preferring what step 1 built. pip takes
#    a --platform literally, so every manylinux tag the nodes' glibc runs is named.
project=$(ls "$stage"/built/appliance-*.whl)
platforms=()
for minor in $(seq 17 "${glibc#2.}"); do
    platforms+=(--platform "manylinux_2_${minor}_${arch}")
done
"$python" -m pip download --quiet --only-binary=:all: "${platforms[@]}" \
    --python-version "$pyversion" --implementation cp --find-links "$stage/built" \
    --dest "$stage/wheelhouse" "$project"
listing() { (cd "$1" 2>/dev/null && sha256sum -- *.whl 2>/dev/null | sort -k2) || true; }
new=$(listing "$stage/wheelhouse")
if [ "$(listing "$out")" != "$new" ]; then
    mkdir -p "$out"
    rm -f "$out"/*.whl
    cp "$stage"/wheelhouse/*.whl "$out"/
    echo "wheelhouse changed"
fi
echo "digest $(printf '%s\n' "$new" | sha256sum | cut -d' ' -f1)"
