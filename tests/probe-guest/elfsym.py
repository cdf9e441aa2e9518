"""The probe image builders' shared helper: a symbol's address in the probe ELF (via nm)."""
import subprocess
import sys


def symbol(elf, name, tool):
    """Address of `name` in `elf`; exits naming `tool` when the symbol is missing."""
    out = subprocess.run(["nm", elf], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    sys.exit(f"{tool}: symbol {name} not found in {elf}")
