#!/usr/bin/env bash
# Installs what building and testing cvmm needs on a Debian 12 machine (run as root).
# Idempotent: packages already present are not fetched again.
set -euo pipefail

need_pkgs=()
want() { dpkg -s "$1" >/dev/null 2>&1 || need_pkgs+=("$1"); }

# Build: a C toolchain for crates with C parts, objcopy/objdump for the probe guest, python3
# for its bzImage header.
for p in build-essential binutils python3 file; do want "$p"; done
if [[ "${1:-}" == "--test" ]]; then
  # Tests: QEMU (the nested rig and the comparison), busybox + cpio (guest initramfs),
  # util-linux (unshare), OVMF images (firmware/TEE measurement tests), DejaVu (bench plots),
  # acpica-tools (iasl disassembles the ACPI tables in tests/acpi_dump.rs).
  for p in qemu-system-x86 qemu-utils busybox-static cpio util-linux ovmf kmod python3-pip \
    fonts-dejavu-core acpica-tools; do want "$p"; done
fi

if ((${#need_pkgs[@]})); then
  echo "install-deps: apt-get install ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if [[ "${1:-}" == "--test" ]] && ! command -v sev-snp-measure >/dev/null; then
  # Independent oracle for SNP launch digests.
  python3 -m pip install --quiet sev-snp-measure==0.0.13 || pip3 install --quiet --break-system-packages sev-snp-measure==0.0.13
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found: install Rust >= 1.85 (rustup) first" >&2
  exit 1
fi

if [[ "${1:-}" == "--test" ]] && ! cargo fuzz --version >/dev/null 2>&1; then
  # The fuzz smoke run (scripts/fuzz-smoke.sh); stable Rust is enough, see fuzz/README.md.
  echo "install-deps: cargo install cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
