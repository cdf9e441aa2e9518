#!/bin/sh
# Builds the cvmm probe guest and writes OUTDIR/probe-pvh.elf, OUTDIR/probe.bzImage and
# OUTDIR/probe-fw.bin (the probe as a 256 KiB firmware image, FW protocol).
# Usage: tests/probe-guest/build.sh OUTDIR   (env: CARGO_TARGET_DIR). Always a release build: the
# dev profile links core's panic machinery, which needs an unwinder the probe does not have.
set -eu
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
target_dir=${CARGO_TARGET_DIR:-$here/target}
# RUSTFLAGS replaces the workspace's target rustflags. No SSE anywhere (PVM cannot emulate it).
RUSTFLAGS="-C target-feature=-sse,-sse2,-avx,-avx2,+soft-float -C relocation-model=static \
 -C panic=abort -C link-arg=-nostartfiles -C link-arg=-nostdlib -C link-arg=-static \
 -C link-arg=-Wl,-T,$here/link.ld -C link-arg=-Wl,--build-id=none -C link-arg=-Wl,-n" \
CARGO_TARGET_DIR=$target_dir cargo build --quiet --release \
  --manifest-path "$here/Cargo.toml" --target x86_64-unknown-linux-gnu
elf=$target_dir/x86_64-unknown-linux-gnu/release/cvmm-probe
objcopy --strip-all "$elf" "$out/probe-pvh.elf"
objcopy -O binary --only-section=.text32 --only-section=.text --only-section=.rodata --only-section=.note.Xen \
  --only-section=.data --only-section=.got "$elf" "$out/probe-payload.bin"
objcopy --dump-section .setup16="$out/probe-setup16.bin" "$elf" /dev/null
python3 "$here/mkbzimage.py" "$elf" "$out/probe-setup16.bin" "$out/probe-payload.bin" \
  "$out/probe.bzImage"
objcopy --dump-section .fwpage="$out/probe-fwpage.bin" "$elf" /dev/null
python3 "$here/mkfwimage.py" "$elf" "$out/probe-fwpage.bin" "$out/probe-payload.bin" \
  "$out/probe-fw.bin"
rm -f "$out/probe-payload.bin" "$out/probe-setup16.bin" "$out/probe-fwpage.bin"
"$here/check-no-sse.sh" "$out/probe-pvh.elf" "$out/probe-fw.bin"
