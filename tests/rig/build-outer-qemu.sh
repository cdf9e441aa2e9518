#!/usr/bin/env bash
# Builds the outer QEMU of the nested rig: Debian's own qemu source (the version installed,
# with Debian's patches) plus the rig's fixes in patches/, TCG only, x86_64 only. It is the
# L0 emulator, nothing more: cvmm never uses it, L1 keeps Debian's QEMU for L2 comparisons.
#
# Why: Debian's QEMU 7.2 aborts under TCG when a nested SVM guest writes CR8 while its host
# has an interrupt window open (patches/tcg-svm-cr8-bql.patch), which every OVMF interrupt
# handler does; the firmware cases of tier C need a rig that survives OVMF.
#
# Output: $RIG_CACHE/outer-qemu/bin/qemu-system-x86_64 (kept; rebuilt when a patch or the
# installed qemu changes). It finds its ROMs relative to itself: share/ links to the system's.
# Usage: tests/rig/build-outer-qemu.sh      Env: RIG_CACHE, RIG_QEMU_JOBS (default: nproc)
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

OUT="$RIG_CACHE/outer-qemu"
PATCHES=("$RIG_DIR"/patches/*.patch)

stamp() {
    { dpkg-query -W -f='${Version}\n' qemu-system-x86; cat "${PATCHES[@]}"; } | sha256sum | cut -c1-16
}

fetch_source() {
    local work="$1" version="$2" lists="$1/apt-lists" src="$1/sources.list"
    # A private deb-src list and state dir: the system's apt configuration stays untouched.
    mkdir -p "$lists/partial"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" >"$src"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main" >>"$src"
    local opts=(-o "Dir::Etc::SourceList=$src" -o "Dir::Etc::SourceParts=-" -o "Dir::State::Lists=$lists")
    apt-get "${opts[@]}" update -qq
    (cd "$work" && apt-get "${opts[@]}" source --download-only -qq "qemu=$version")
}

main() {
    [ "$(id -u)" = 0 ] || die "run as root (installs build packages)"
    local want have version tree
    want=$(stamp)
    have=$(cat "$OUT/stamp" 2>/dev/null || true)
    if [ "$want" = "$have" ] && [ -x "$OUT/bin/qemu-system-x86_64" ]; then
        log "outer QEMU up to date ($OUT)"
        return 0
    fi
    local need=()
    for p in build-essential ninja-build meson pkg-config libglib2.0-dev libpixman-1-dev \
        zlib1g-dev libfdt-dev flex bison python3-venv dpkg-dev; do
        dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
    if ((${#need[@]})); then
        log "apt-get install ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${need[@]}" >/dev/null
    fi
    version=$(dpkg-query -W -f='${source:Version}' qemu-system-x86)
    WORK=$(mktemp -d "$RIG_CACHE/qemu-build.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
    local work="$WORK"
    log "fetching the qemu $version source"
    fetch_source "$work" "$version"
    (cd "$work" && dpkg-source -x --no-check ./qemu_*.dsc tree >/dev/null)
    tree="$work/tree"
    for p in "${PATCHES[@]}"; do
        log "applying $(basename "$p")"
        patch -d "$tree" -p1 -s <"$p"
    done
    log "building qemu-system-x86_64 (TCG only)"
    mkdir -p "$tree/build"
    # Debian's paths, so the binary finds the installed ROMs (SeaBIOS, linuxboot, pvh).
    (cd "$tree/build" && ../configure --prefix=/usr \
        --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu \
        --target-list=x86_64-softmmu --enable-tcg --disable-kvm --disable-xen \
        --disable-docs --disable-tools --disable-werror --disable-user --disable-slirp \
        --disable-vnc --disable-sdl --disable-gtk --disable-opengl --disable-spice \
        --disable-curses >"$work/configure.log" 2>&1 \
        || { tail -n 20 "$work/configure.log" >&2; die "qemu configure failed"; }
     ninja -j "${RIG_QEMU_JOBS:-$(nproc)}" qemu-system-x86_64 >"$work/build.log" 2>&1 \
        || { tail -n 30 "$work/build.log" >&2; die "qemu build failed"; })
    rm -rf "$OUT"
    mkdir -p "$OUT/bin" "$OUT/share" "$OUT/lib"
    install -m 0755 "$tree/build/qemu-system-x86_64" "$OUT/bin/qemu-system-x86_64"
    # The ROMs come from the installed package (same version), found relative to the binary.
    ln -s /usr/share/qemu "$OUT/share/qemu"
    ln -s /usr/share/seabios "$OUT/share/seabios"
    ln -s /usr/lib/ipxe "$OUT/lib/ipxe"
    echo "$want" >"$OUT/stamp"
    "$OUT/bin/qemu-system-x86_64" --version | head -n 1
    log "outer QEMU ready: $OUT/bin/qemu-system-x86_64"
}

main "$@"
