#!/usr/bin/env bash
# Prepare the nested rig: install the host packages, fetch and unpack a stock
# Debian 6.1 kernel, extract its uncompressed vmlinux (PVH entry), and build
# the L2 busybox initramfs. Everything lands in $RIG_CACHE; reruns are fast.
#
# Usage: tests/rig/prepare.sh        (env RIG_CACHE, default build/rig-cache)
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"

# Modules the L2 guest loads when present (their dependencies come along).
L2_MODULES=(virtio_pci virtio_mmio virtio_net virtio_blk virtio_console
    9p 9pnet_virtio vmw_vsock_virtio_transport)

install_host_packages() {
    ensure_pkgs qemu-system-x86 busybox-static cpio kmod xz-utils zstd gzip
}

# newest_kernel_pkg: name of the newest linux-image-6.1.0-N-amd64 package,
# preferring the -unsigned one (same image, no signing wrapper package).
newest_kernel_pkg() {
    local pkgs
    pkgs=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64(-unsigned)?$' \
        | awk '{print $1}')
    if [ -z "$pkgs" ]; then
        apt_update_once
        pkgs=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64(-unsigned)?$' \
            | awk '{print $1}')
    fi
    [ -n "$pkgs" ] || die "no linux-image-6.1.0-*-amd64 package known to apt"
    # Sort by ABI number; for equal numbers the -unsigned name sorts last.
    printf '%s\n' $pkgs | sort -V | tail -n 1
}

fetch_kernel() {
    local pkg deb kver
    mkdir -p "$RIG_CACHE/debs"
    if [ -s "$KVER_FILE" ] && [ -d "$KROOT/lib/modules/$(cat "$KVER_FILE")" ] \
        && [ -z "${RIG_REFRESH:-}" ]; then
        log "kernel $(cat "$KVER_FILE") already unpacked (RIG_REFRESH=1 to re-check)"
        return 0
    fi
    pkg=$(newest_kernel_pkg)
    kver=${pkg#linux-image-}
    kver=${kver%-unsigned}
    deb=$(ls "$RIG_CACHE/debs/${pkg}_"*.deb 2>/dev/null | tail -n 1 || true)
    if [ -z "$deb" ]; then
        log "downloading $pkg"
        if ! (cd "$RIG_CACHE/debs" && apt-get download -qq "$pkg" 2>/dev/null); then
            apt_update_once   # stale package lists: the old version is gone
            pkg=$(newest_kernel_pkg)
            kver=${pkg#linux-image-}
            kver=${kver%-unsigned}
            (cd "$RIG_CACHE/debs" && apt-get download -qq "$pkg")
        fi
        deb=$(ls "$RIG_CACHE/debs/${pkg}_"*.deb | tail -n 1)
    fi
    log "unpacking $(basename "$deb")"
    rm -rf "$KROOT"
    dpkg-deb -x "$deb" "$KROOT"
    [ -d "$KROOT/lib/modules/$kver" ] || die "package $pkg has no lib/modules/$kver"
    depmod -b "$KROOT" "$kver"
    echo "$kver" >"$KVER_FILE"
}

# slice FILE OFFSET LENGTH: bytes of FILE to stdout.
slice() { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none; }

# extract_vmlinux BZIMAGE OUT: the compressed payload's offset and length are
# in the boot protocol header (setup_sects at 0x1f1, payload_offset at 0x248,
# payload_length at 0x24c); decompress it according to its magic.
extract_vmlinux() {
    local bz="$1" out="$2" setup_sects off len magic
    setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bz" | tr -d ' ')
    [ "$setup_sects" = 0 ] && setup_sects=4
    off=$(od -An -tu4 -j $((0x248)) -N4 "$bz" | tr -d ' ')
    len=$(od -An -tu4 -j $((0x24c)) -N4 "$bz" | tr -d ' ')
    off=$(( (setup_sects + 1) * 512 + off ))
    magic=$(slice "$bz" "$off" 6 | od -An -tx1 | tr -d ' \n')
    case "$magic" in
        fd377a585a00*) slice "$bz" "$off" "$len" | xz -dc --single-stream >"$out.tmp" ;;
        1f8b*) slice "$bz" "$off" "$len" | { gzip -dc 2>/dev/null || true; } >"$out.tmp" ;;
        28b52ffd*) slice "$bz" "$off" $((len - 4)) | zstd -dcq >"$out.tmp" ;;
        *) die "unknown payload compression in $bz (magic $magic)" ;;
    esac
    [ "$(slice "$out.tmp" 0 4 | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] \
        || die "payload of $bz did not decompress to an ELF file"
    mv "$out.tmp" "$out"
    log "vmlinux: $(stat -c %s "$out") bytes (payload magic ${magic:0:8})"
}

install_kernel_images() {
    local kver="$1" bz="$KROOT/boot/vmlinuz-$1"
    [ -f "$bz" ] || die "no $bz"
    if [ ! -f "$RIG_CACHE/vmlinux" ] || [ "$bz" -nt "$RIG_CACHE/vmlinux" ]; then
        cp "$bz" "$RIG_CACHE/bzImage"
        extract_vmlinux "$bz" "$RIG_CACHE/vmlinux"
    fi
    ln -sfn "kroot/lib/modules/$kver" "$RIG_CACHE/modules"
}

build_l2_initrd() {
    local kver="$1" root="$RIG_CACHE/l2-root"
    rm -rf "$root"
    add_busybox "$root"
    add_modules "$root" "$kver" "${L2_MODULES[@]}"
    # Loaded only by l2-cases/powerbutton.sh: the ACPI button driver and the input events it sends.
    add_module_list rig-modules-button "$root" "$kver" button evdev
    install -m 0755 "$RIG_DIR/l2-init.sh" "$root/init"
    install -D -m 0755 "$RIG_DIR/l2-udhcpc.sh" "$root/etc/udhcpc/default.script"
    mkdir -p "$root/l2-cases"
    cp "$RIG_DIR"/l2-cases/*.sh "$root/l2-cases/"
    make_cpio "$root" "$RIG_CACHE/l2-initrd.cpio.gz" gzip
    rm -rf "$root"
    log "l2-initrd.cpio.gz: $(stat -c %s "$RIG_CACHE/l2-initrd.cpio.gz") bytes"
}

main() {
    [ "$(id -u)" = 0 ] || die "run as root (installs packages)"
    mkdir -p "$RIG_CACHE"
    install_host_packages
    fetch_kernel
    local kver
    kver=$(rig_kver)
    install_kernel_images "$kver"
    build_l2_initrd "$kver"
    log "ready: kernel $kver in $RIG_CACHE"
}

main "$@"
