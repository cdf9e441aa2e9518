#!/usr/bin/env python3
"""Wraps the probe into a Linux boot protocol 2.12 image (bzImage layout).

Usage: mkbzimage.py ELF SETUP16_BIN PAYLOAD_BIN OUT

Layout: boot sector (512 bytes, only the setup header fields), then the real-mode stub from the
ELF's .setup16 section at offset 0x200 (its first two bytes jump over the header, which this
script fills in), padded to whole sectors, then the protected-mode payload that loads at
0x100000 (Linux 32-bit entry at +0, 64-bit entry at +0x200).
"""
import struct
import sys

import elfsym

LOAD_ADDR = 0x100000
HEADER_END = 0x270  # first byte of stub code; header fields end at 0x268 (protocol 2.12)


def symbol(elf, name):
    return elfsym.symbol(elf, name, "mkbzimage")


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    elf, setup16_path, payload_path, out = sys.argv[1:]
    stub = open(setup16_path, "rb").read()
    payload = open(payload_path, "rb").read()
    if len(stub) <= HEADER_END - 0x200 or stub[0] != 0xEB:
        sys.exit(f"mkbzimage: bad .setup16 stub ({len(stub)} bytes)")
    if any(stub[2:HEADER_END - 0x200]):
        sys.exit("mkbzimage: .setup16 stub overlaps the setup header")
    if symbol(elf, "linux_entry32") != LOAD_ADDR or symbol(elf, "linux_entry64") != LOAD_ADDR + 0x200:
        sys.exit("mkbzimage: entry points are not at 0x100000 / 0x100200")
    init_size = (symbol(elf, "__end") - LOAD_ADDR + 0xFFF) & ~0xFFF

    setup = bytearray(0x200) + bytearray(stub)
    setup += bytearray(-len(setup) % 512)
    setup_sects = len(setup) // 512 - 1

    def put(off, fmt, val):
        struct.pack_into("<" + fmt, setup, off, val)

    put(0x1F1, "B", setup_sects)
    put(0x1F4, "I", (len(payload) + 15) // 16)  # syssize, 16-byte units
    put(0x1FE, "H", 0xAA55)  # boot_flag
    setup[0x202:0x206] = b"HdrS"
    put(0x206, "H", 0x020C)  # protocol version 2.12
    put(0x20C, "H", 0x1000)  # start_sys_seg
    put(0x211, "B", 0x01)  # loadflags: LOADED_HIGH
    put(0x212, "H", 0x8000)  # setup_move_size
    put(0x214, "I", LOAD_ADDR)  # code32_start
    put(0x22C, "I", 0x7FFFFFFF)  # initrd_addr_max
    put(0x230, "I", 0x200000)  # kernel_alignment
    put(0x235, "B", 21)  # min_alignment (log2)
    put(0x236, "H", 0x0001)  # xloadflags: XLF_KERNEL_64
    put(0x238, "I", 4095)  # cmdline_size
    put(0x258, "Q", LOAD_ADDR)  # pref_address
    put(0x260, "I", init_size)  # init_size: image + bss + stack
    with open(out, "wb") as f:
        f.write(setup)
        f.write(payload)


if __name__ == "__main__":
    main()
