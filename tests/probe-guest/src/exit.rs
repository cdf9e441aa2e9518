//! The ways the probe ends, chosen with `probe.exit=` on the command line.

use crate::acpi::{self, Gas};
use crate::phys;
use crate::serial::{outb, outl, outw};

/// How the probe ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// ACPI S5 (sleep control register or PM1a_CNT), else isa-debug-exit at 0xf4.
    Poweroff,
    /// i8042 reset (0xFE to port 0x64), then the FADT reset register.
    Reboot,
    /// Exception with an empty IDT.
    TripleFault,
    /// pvpanic "panicked" (1 to port 0x505).
    Panic,
    /// `cli; hlt` forever.
    Halt,
}

impl ExitKind {
    /// Parses a `probe.exit=` value.
    pub fn parse(s: &[u8]) -> Option<Self> {
        Some(match s {
            b"poweroff" => ExitKind::Poweroff,
            b"reboot" => ExitKind::Reboot,
            b"triplefault" => ExitKind::TripleFault,
            b"panic" => ExitKind::Panic,
            b"halt" => ExitKind::Halt,
            _ => return None,
        })
    }

    /// Marker spelling.
    pub fn name(self) -> &'static [u8] {
        match self {
            ExitKind::Poweroff => b"poweroff",
            ExitKind::Reboot => b"reboot",
            ExitKind::TripleFault => b"triplefault",
            ExitKind::Panic => b"panic",
            ExitKind::Halt => b"halt",
        }
    }
}

/// Ends the probe; `rsdp` locates the FADT for poweroff and reboot.
pub fn exit(kind: ExitKind, rsdp: Option<u64>) -> ! {
    let fadt = rsdp.and_then(|r| acpi::find_table(r, b"FACP"));
    match kind {
        ExitKind::Poweroff => {
            if let Some(fadt) = fadt {
                let slp_typ = acpi::dsdt(fadt).and_then(acpi::s5_slp_typ).unwrap_or(5);
                if let Some(reg) = acpi::sleep_control(fadt) {
                    gas_write(reg, (u64::from(slp_typ & 7) << 2) | (1 << 5));
                } else if let Ok(port @ 1..=0xffff) = u16::try_from(acpi::pm1a_cnt(fadt)) {
                    outw(port, (u16::from(slp_typ & 7) << 10) | (1 << 13));
                }
            }
            outb(0xf4, 0);
        }
        ExitKind::Reboot => {
            outb(0x64, 0xfe);
            if let Some((reg, val)) = fadt.and_then(acpi::reset_reg) {
                gas_write(reg, u64::from(val));
            }
        }
        ExitKind::TripleFault => triple_fault(),
        ExitKind::Panic => outb(0x505, 1),
        ExitKind::Halt => {}
    }
    halt()
}

/// `cli; hlt` forever.
pub fn halt() -> ! {
    loop {
        // SAFETY: stops the vCPU; touches no memory.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

fn triple_fault() -> ! {
    let idt = [0u16; 5]; // limit 0, base 0
                         // SAFETY: deliberately loads an empty IDT and raises #UD: #UD -> #GP -> #DF -> shutdown.
    unsafe {
        core::arch::asm!("lidt [{}]", "ud2", in(reg) idt.as_ptr(), options(noreturn, nostack))
    }
}

/// Writes `val` to a register described by a Generic Address Structure.
fn gas_write(reg: Gas, val: u64) {
    let size = match reg.access {
        1..=4 => 1u8 << (reg.access - 1),
        _ => (reg.bit_width / 8).clamp(1, 8),
    };
    match reg.space {
        1 => {
            let Ok(port) = u16::try_from(reg.addr) else {
                return;
            };
            match size {
                1 => outb(port, val as u8),
                2 => outw(port, val as u16),
                _ => outl(port, val as u32),
            }
        }
        0 => {
            let Some(b) = phys::bytes(reg.addr, usize::from(size)) else {
                return;
            };
            let p = b.as_ptr() as *mut u8;
            // SAFETY: `p` is an identity-mapped, range-checked MMIO register of `size` bytes
            // named by the firmware; volatile so the store happens exactly once.
            unsafe {
                match size {
                    1 => p.write_volatile(val as u8),
                    2 => p.cast::<u16>().write_volatile(val as u16),
                    4 => p.cast::<u32>().write_volatile(val as u32),
                    _ => p.cast::<u64>().write_volatile(val),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_every_kind() {
        for k in [
            ExitKind::Poweroff,
            ExitKind::Reboot,
            ExitKind::TripleFault,
            ExitKind::Panic,
            ExitKind::Halt,
        ] {
            assert_eq!(ExitKind::parse(k.name()), Some(k));
        }
        assert_eq!(ExitKind::parse(b"off"), None);
    }
}
