#!/bin/sh
# Fails if the ELF IMAGE contains instructions the PVM host cannot run: SSE/AVX registers, BMI2
# shifts, int3, xrstor, cmpxchg16b. probe.bzImage carries the same bytes as probe-pvh.elf's load
# segment (build.sh makes it from that ELF), so checking the ELF covers both.
# Usage: check-no-sse.sh IMAGE.elf
set -eu
img=${1:?usage: check-no-sse.sh IMAGE.elf}
if [ "$(head -c 4 "$img" | od -An -c | tr -d ' ')" != "177ELF" ]; then
  echo "check-no-sse: $img is not an ELF (check probe-pvh.elf, it holds the bzImage's code)" >&2
  exit 2
fi
# Disassemble every code section; .text32 holds the probe's 32-bit code, the rest is 64-bit.
disasm() {
  objdump -h "$img" | awk '/^ *[0-9]+ /{name=$2; getline; if ($0 ~ /CODE/) print name}' |
    while read -r sec; do
      mode=att
      [ "$sec" = .text32 ] && mode=att,i386
      objdump -d -M "$mode" -j "$sec" "$img"
    done
}
bad=$(disasm | grep -E '%[xyz]mm[0-9]|[[:space:]](shlx|sarx|shrx|int3|xrstor[a-z0-9]*|cmpxchg16b)([[:space:]]|$)' || true)
if [ -n "$bad" ]; then
  echo "check-no-sse: forbidden instructions in $img:" >&2
  printf '%s\n' "$bad" | head -20 >&2
  exit 1
fi
echo "check-no-sse: $img ok"
