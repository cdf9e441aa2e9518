#!/usr/bin/env python3
"""Builds probe-fw.bin: the probe as a 256 KiB firmware (flash) image mapped at the top of 4 GiB.

Usage: mkfwimage.py ELF FWPAGE_BIN PAYLOAD_BIN OUT

Layout (offset: flash address):
  0x00000 (0xfffc0000)  the payload: the bytes the bzImage carries (.text32 .. .got, linked at
                        0x100000); the reset page copies it to 0x100000
  ...                   0xff padding (erased flash)
  0x3d000 (0xffffd000)  an empty UEFI firmware volume (header only), so the image passes a
                        VMM's "is this a firmware image" check (cvmm looks for "_FVH")
  0x3e000 (0xffffe000)  one erased 4 KiB page kept free for write tests (probe.flashro=)
  0x3f000 (0xfffff000)  the reset page from the ELF's .fwpage section: 16-bit stub at +0,
                        32-bit copy loop at +0x80, GDT at +0x100, reset vector at +0xff0
"""
import sys

import elfsym

FLASH_SIZE = 0x40000
FLASH_BASE = (1 << 32) - FLASH_SIZE
PAGE = 0x1000
SPARE_OFF = FLASH_SIZE - 2 * PAGE  # erased page for write tests
FV_OFF = FLASH_SIZE - 3 * PAGE  # an empty firmware volume
FFS2_GUID = bytes.fromhex("78e58c8c3d8a1c4f9935896185c32dd3")  # EFI_FIRMWARE_FILE_SYSTEM2_GUID


def empty_volume():
    """A one-block firmware volume header (PI spec EFI_FIRMWARE_VOLUME_HEADER), no files."""
    import struct
    hdr = bytearray(
        bytes(16) + FFS2_GUID + struct.pack("<Q", PAGE) + b"_FVH"
        + struct.pack("<IHHHBB", 0x0004FEFF, 0x48, 0, 0, 0, 2)
        + struct.pack("<IIII", 1, PAGE, 0, 0)
    )
    assert len(hdr) == 0x48
    csum = (-sum(struct.unpack("<36H", hdr))) & 0xFFFF
    hdr[50:52] = struct.pack("<H", csum)
    return bytes(hdr) + b"\xff" * (PAGE - len(hdr))
RESET_OFF = FLASH_SIZE - PAGE
LOAD_ADDR = 0x100000


def symbol(elf, name):
    return elfsym.symbol(elf, name, "mkfwimage")


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    elf, page_path, payload_path, out = sys.argv[1:]
    page = open(page_path, "rb").read()
    payload = open(payload_path, "rb").read()
    if len(page) != PAGE or page[0xFF0] != 0xE9:
        sys.exit(f"mkfwimage: bad .fwpage ({len(page)} bytes)")
    if symbol(elf, "__image_start") != LOAD_ADDR:
        sys.exit("mkfwimage: image is not linked at 0x100000")
    if len(payload) != symbol(elf, "__image_size"):
        sys.exit(f"mkfwimage: payload is {len(payload)} bytes, __image_size differs")
    if symbol(elf, "fw_entry32") >= LOAD_ADDR + 0x200:
        sys.exit("mkfwimage: fw_entry32 is not in .text32")
    if len(payload) > FV_OFF:
        sys.exit(f"mkfwimage: payload of {len(payload)} bytes does not fit below {FV_OFF:#x}")
    img = bytearray(b"\xff" * FLASH_SIZE)
    img[: len(payload)] = payload
    img[FV_OFF : FV_OFF + PAGE] = empty_volume()
    img[RESET_OFF:] = page
    assert len(img) == FLASH_SIZE
    with open(out, "wb") as f:
        f.write(img)


if __name__ == "__main__":
    main()
