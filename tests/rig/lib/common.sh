# Shared helpers for the nested rig scripts (sourced, not executed).
# Defines the cache layout, logging, and the package installer.

RIG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(cd "$RIG_DIR/../.." && pwd)"
RIG_CACHE="${RIG_CACHE:-$REPO_DIR/build/rig-cache}"

# Cache layout (all produced by prepare.sh).
KROOT="$RIG_CACHE/kroot"            # the unpacked kernel package
KVER_FILE="$RIG_CACHE/kver"         # the kernel release string, e.g. 6.1.0-56-amd64

log() { printf '[rig] %s\n' "$*" >&2; }
die() { printf '[rig] error: %s\n' "$*" >&2; exit 1; }
trap 'printf "[rig] error: command failed (rc=$?) at %s:%s\n" "${BASH_SOURCE[0]##*/}" "$LINENO" >&2' ERR

APT_UPDATED=0
apt_update_once() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
}

# ensure_pkgs PKG...: install the Debian packages that are not installed yet.
ensure_pkgs() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    [ "${#missing[@]}" = 0 ] && return 0
    log "installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
        apt_update_once
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# rig_kver: the kernel release prepared by prepare.sh.
rig_kver() {
    [ -s "$KVER_FILE" ] || die "no kernel in $RIG_CACHE: run tests/rig/prepare.sh first"
    cat "$KVER_FILE"
}

# module_paths KVER MODULE...: absolute paths of the modules and all their
# dependencies, in load order; modules that do not exist are skipped.
module_paths() {
    local kver="$1" m
    shift
    for m in "$@"; do
        /sbin/modprobe --dirname "$KROOT" --set-version "$kver" --show-depends "$m" 2>/dev/null \
            | awk '$1 == "insmod" { print $2 }'
    done | awk '!seen[$0]++'
}

# add_modules ROOT KVER MODULE...: copy the modules and their dependencies into
# the initramfs tree ROOT and write ROOT/etc/rig-modules (load order, one
# path per line, relative to /).
add_modules() {
    add_module_list rig-modules "$@"
}

# add_module_list NAME ROOT KVER MODULE...: as add_modules, listed in ROOT/etc/NAME.
add_module_list() {
    local list="$1" root="$2" kver="$3" path rel
    shift 3
    mkdir -p "$root/etc"
    : >"$root/etc/$list"
    while read -r path; do
        [ -n "$path" ] || continue
        rel="${path#"$KROOT"}"
        mkdir -p "$root$(dirname "$rel")"
        cp "$path" "$root$rel"
        echo "$rel" >>"$root/etc/$list"
    done < <(module_paths "$kver" "$@")
}

# add_busybox ROOT: install the static busybox and its applet links.
add_busybox() {
    local root="$1" applet
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc,root,run}
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
}

# make_cpio ROOT OUT [gzip|none]: pack ROOT as a newc cpio archive.
make_cpio() {
    local root="$1" out="$2" comp="${3:-gzip}"
    if [ "$comp" = gzip ]; then
        (cd "$root" && find . -print0 | LC_ALL=C sort -z \
            | cpio --null -o -H newc --owner=0:0 --quiet | gzip -6 -n) >"$out.tmp"
    else
        (cd "$root" && find . -print0 | LC_ALL=C sort -z \
            | cpio --null -o -H newc --owner=0:0 --quiet) >"$out.tmp"
    fi
    mv "$out.tmp" "$out"
}
