#!/usr/bin/env bash
# `make test-arm`: the runtime's ARM (aarch64) CPU path, run under qemu user-mode emulation.
#
#   bash scripts/test_arm.sh [X86_PYTHON] [BUILD]     (defaults: .venv/bin/python, build)
#   environment: ARM_CPU=cortex-a76|neoverse-n1|cortex-a72|max   the emulated CPU (cortex-a76)
#                ARM_SLOW=1    also the runtime tests too slow for emulation (arm_check.py SLOW)
#
# 1. tools: qemu-aarch64-static (taken out of Debian's qemu-user-static package into
#    BUILD/arm/qemu when the host has none: nothing installed, no binfmt handler registered) and
#    mmdebstrap (`apt-get install -y mmdebstrap` when missing: the one change to the host);
# 2. an arm64 Debian 12 root filesystem, unpacked by mmdebstrap's `extract` variant (no arm64
#    code runs to make it), in BUILD/arm/rootfs, with a /proc/cpuinfo for the emulated CPU;
# 3. the aarch64 wheels of scripts/arm-requirements.txt in BUILD/arm/pkgs (the x86 pip, --platform);
# 4. on x86 (X86_PYTHON, with torch): tiny engines exported and the x86 answers recorded
#    (scripts/arm_check.py record);
# 5. under emulation: the runtime tests, then mobilevlm-caption on every engine compared with x86
#    (scripts/arm_check.py tests / compare).
# Everything lives in BUILD/arm; steps 1-3 (and the export in 4) are redone only when their inputs
# changed. Exit status non-zero on any failure or mismatch.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
X86_PY=${1:-.venv/bin/python}
BUILD=${2:-build}
case $BUILD in /*) ;; *) BUILD=$REPO/$BUILD ;; esac
ARM=$BUILD/arm
ROOTFS=$ARM/rootfs
PKGS=$ARM/pkgs
CHECK=$ARM/check
REQS=scripts/arm-requirements.txt
# The rootfs: Debian's python3.11 and the C++ runtime the wheels link against (deps follow).
SUITE=bookworm
ROOTFS_PACKAGES=python3.11,libstdc++6,libgomp1
# The emulated CPU. cortex-a76 (ARMv8.2-A: NEON, fp16, dotprod; no SVE, no i8mm) is the core of a
# Raspberry Pi 5 and has the features of Jetson Orin's Cortex-A78AE; `max` has every extension
# qemu knows (SVE2, SME, i8mm, bf16), so onnxruntime takes other kernels there.
export ARM_CPU=${ARM_CPU:-cortex-a76}
case $ARM_CPU in  # MIDR fields of qemu's model: implementer variant part revision
    cortex-a76)  MIDR="0x41 0x4 0xd0b 1" ;;
    neoverse-n1) MIDR="0x41 0x4 0xd0c 1" ;;
    cortex-a72)  MIDR="0x41 0x0 0xd08 3" ;;
    max)         MIDR="0x00 0x0 0x051 0" ;;
    *) echo "ARM_CPU=$ARM_CPU: expected cortex-a76, neoverse-n1, cortex-a72 or max" >&2; exit 2 ;;
esac
START=$SECONDS
mkdir -p "$ARM"

step() { printf '\n== %s\n' "$*"; }

# -- 1. tools ------------------------------------------------------------------------------------
step "tools"
QEMU=$(command -v qemu-aarch64-static || true)
if [ -z "$QEMU" ]; then
    QEMU=$ARM/qemu/usr/bin/qemu-aarch64-static
    if [ ! -x "$QEMU" ]; then
        # The static binary only: installing the package could register binfmt handlers.
        mkdir -p "$ARM/qemu/deb"
        (cd "$ARM/qemu/deb" && rm -f ./*.deb && apt-get download -q qemu-user-static) \
            || { echo "apt-get download qemu-user-static failed (run apt-get update?)" >&2; exit 1; }
        dpkg-deb -x "$ARM"/qemu/deb/qemu-user-static_*.deb "$ARM/qemu" && rm -rf "$ARM/qemu/deb"
    fi
fi
if ! command -v mmdebstrap >/dev/null; then
    echo "mmdebstrap is missing: apt-get install -y mmdebstrap"
    apt-get install -y -q mmdebstrap || { apt-get update -q && apt-get install -y -q mmdebstrap; }
fi
echo "$("$QEMU" --version | head -1)   ($QEMU), CPU $ARM_CPU"

# -- 2. arm64 root filesystem --------------------------------------------------------------------
step "arm64 root filesystem ($ROOTFS)"
want="$SUITE $ROOTFS_PACKAGES"
if [ "$(cat "$ROOTFS/.made-by-test-arm" 2>/dev/null)" = "$want" ]; then
    echo "up to date"
else
    rm -rf "$ROOTFS" "$ROOTFS.tmp"
    # No mirror named: mmdebstrap takes Debian's package registry (with updates and security).
    mmdebstrap --quiet --variant=extract --architectures=arm64 --include="$ROOTFS_PACKAGES" \
        "$SUITE" "$ROOTFS.tmp" </dev/null
    echo "$want" > "$ROOTFS.tmp/.made-by-test-arm"
    mv "$ROOTFS.tmp" "$ROOTFS"
    echo "made: $(du -sh "$ROOTFS" | cut -f1)"
fi
# qemu's user mode shows the guest the host's (x86) /proc/cpuinfo, where onnxruntime's CPU
# detection finds no ARM core: 1.28 and newer segfault at import, 1.27 warns "Unknown CPU vendor".
# An arm64 kernel lists each core's MIDR fields there; write those of the emulated model into the
# rootfs, where qemu -L serves it as /proc/cpuinfo (features come from HWCAP, which qemu sets).
mkdir -p "$ROOTFS/proc"
read -r implementer variant part revision <<< "$MIDR"
for ((i = 0; i < $(getconf _NPROCESSORS_CONF); i++)); do
    printf 'processor\t: %d\nCPU implementer\t: %s\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
        "$i" "$implementer" "$variant" "$part" "$revision"
done > "$ROOTFS/proc/cpuinfo"

# -- 3. aarch64 wheels ---------------------------------------------------------------------------
step "aarch64 wheels ($PKGS)"
want=$(sha256sum "$REQS" | cut -d' ' -f1)
if [ "$(cat "$PKGS/.made-by-test-arm" 2>/dev/null)" = "$want" ]; then
    echo "up to date"
else
    rm -rf "$PKGS" "$PKGS.tmp"
    "$X86_PY" -m pip install -q --disable-pip-version-check --no-warn-conflicts --target "$PKGS.tmp" \
        --only-binary=:all: --implementation cp --python-version 3.11 \
        --platform manylinux_2_31_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
        --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
        -r "$REQS" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    echo "$want" > "$PKGS.tmp/.made-by-test-arm"
    mv "$PKGS.tmp" "$PKGS"
fi
sed -n 's/^\([A-Za-z].*==.*\)$/  \1/p' "$REQS"

# The arm64 python3.11, as one command. -0 makes it its own sys.executable, so a test that starts
# `sys.executable` (the caption CLI, ...) gets emulated python again instead of "Exec format error".
# PYTHONHOME keeps every interpreter path inside the rootfs (qemu's -L falls back to host files).
ARM_PY=$ARM/python3
cat > "$ARM_PY" <<EOF
#!/bin/sh
# arm64 python3.11 of $ROOTFS under qemu user-mode emulation (written by scripts/test_arm.sh)
exec "$QEMU" -cpu "$ARM_CPU" -L "$ROOTFS" -0 "\$0" -E PYTHONHOME="$ROOTFS/usr" -E PYTHONNOUSERSITE=1 \\
    -E PYTHONPATH="$PKGS:$REPO" "$ROOTFS/usr/bin/python3.11" "\$@"
EOF
chmod +x "$ARM_PY"

# -- 4. x86: engines and answers -----------------------------------------------------------------
step "x86: tiny engines and x86 answers ($CHECK)"
"$X86_PY" scripts/arm_check.py record "$CHECK"

# -- 5. arm64 under emulation --------------------------------------------------------------------
failed=0
step "arm64 ($ARM_CPU): runtime tests (emulated)"
"$ARM_PY" scripts/arm_check.py tests "$CHECK" || failed=1
step "arm64 ($ARM_CPU): mobilevlm-caption on every engine vs x86 (emulated)"
"$ARM_PY" scripts/arm_check.py compare "$CHECK" || failed=1

step "test-arm ($ARM_CPU): $([ $failed = 0 ] && echo PASSED || echo FAILED) in $((SECONDS - START)) s"
exit $failed
