#!/bin/sh
# Fails if the ELF IMAGE contains instructions the PVM host cannot run: SSE/AVX registers, BMI2
# shifts, int3, xrstor, cmpxchg16b. probe.bzImage carries the same bytes as probe-pvh.elf's load
# segment (build.sh makes it from that ELF), so checking the ELF covers both. probe-fw.bin
# carries those bytes plus the ELF's .fwpage (reset vector and stub), which is checked too; give
# the image as FW.bin to also verify that it holds exactly those bytes.
# Usage: check-no-sse.sh IMAGE.elf [FW.bin]
set -eu
img=${1:?usage: check-no-sse.sh IMAGE.elf [FW.bin]}
fw=${2:-}
if [ "$(head -c 4 "$img" | od -An -c | tr -d ' ')" != "177ELF" ]; then
  echo "check-no-sse: $img is not an ELF (check probe-pvh.elf, it holds the bzImage's code)" >&2
  exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Disassemble every code section; .text32 holds the probe's 32-bit code, the rest is 64-bit.
# .fwpage (the firmware reset page, see entry.rs) has a fixed layout: 16-bit code at 0x000 and
# at 0xff0 (reset vector), 32-bit code at 0x080, data from 0x100.
disasm() {
  objdump -h "$img" | awk '/^ *[0-9]+ /{name=$2; getline; if ($0 ~ /CODE/) print name}' |
    while read -r sec; do
      case $sec in
        .fwpage)
          objcopy --dump-section .fwpage="$tmp/fwpage.bin" "$img" "$tmp/discard.elf" 2>/dev/null
          objdump -D -b binary -M att -m i8086 --start-address=0 --stop-address=0x80 "$tmp/fwpage.bin"
          objdump -D -b binary -M att -m i386 --start-address=0x80 --stop-address=0x100 "$tmp/fwpage.bin"
          objdump -D -b binary -M att -m i8086 --start-address=0xff0 --stop-address=0x1000 "$tmp/fwpage.bin"
          ;;
        .text32) objdump -d -M att,i386 -j "$sec" "$img" ;;
        *) objdump -d -M att -j "$sec" "$img" ;;
      esac
    done
}
bad=$(disasm | grep -E '%[xyz]mm[0-9]|[[:space:]](shlx|sarx|shrx|int3|xrstor[a-z0-9]*|cmpxchg16b)([[:space:]]|$)' || true)
if [ -n "$bad" ]; then
  echo "check-no-sse: forbidden instructions in $img:" >&2
  printf '%s\n' "$bad" | head -20 >&2
  exit 1
fi
echo "check-no-sse: $img ok"
[ -n "$fw" ] || exit 0
# The firmware image: payload at 0 = the ELF's load bytes, 0xff up to the reset page, which is
# the ELF's .fwpage, but for the 0x48-byte header of the empty firmware volume at 0x3d000
# (data, never executed; blanked before the comparison).
objcopy -O binary --only-section=.text32 --only-section=.text --only-section=.rodata \
  --only-section=.note.Xen --only-section=.data --only-section=.got "$img" "$tmp/payload.bin"
objcopy --dump-section .fwpage="$tmp/fwpage.bin" "$img" "$tmp/discard.elf" 2>/dev/null
size=$(wc -c <"$fw")
plen=$(wc -c <"$tmp/payload.bin")
page=$((size - 4096))
fv=$((0x3d000))
if [ "$(dd if="$fw" bs=1 skip=$((fv + 40)) count=4 2>/dev/null)" != _FVH ]; then
  echo "check-no-sse: $fw has no firmware volume header at $fv" >&2
  exit 1
fi
{ head -c "$fv" "$fw"; head -c 72 /dev/zero | tr '\000' '\377'; tail -c "$((size - fv - 72))" "$fw"; } \
  >"$tmp/blanked.bin"
if [ "$size" -ne 262144 ] ||
  ! cmp -s -n "$plen" "$tmp/blanked.bin" "$tmp/payload.bin" ||
  ! tail -c 4096 "$fw" | cmp -s - "$tmp/fwpage.bin" ||
  [ "$(head -c "$page" "$tmp/blanked.bin" | tail -c "$((page - plen))" | tr -d '\377' | wc -c)" -ne 0 ]; then
  echo "check-no-sse: $fw does not hold exactly the checked bytes of $img" >&2
  exit 1
fi
echo "check-no-sse: $fw ok"
