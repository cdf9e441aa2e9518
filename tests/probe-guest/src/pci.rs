//! PCI configuration space of bus 0 (ECAM from the ACPI MCFG when present, else ports
//! 0xCF8/0xCFC), function enumeration, BAR decoding and assignment of unassigned memory BARs.

use crate::mmio::Mmio;
use crate::phys::{u16_at, u64_at, u8_at};
use crate::serial::{inl, outl};

/// Bus/device/function on bus 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf {
    /// Device number (0..32).
    pub dev: u8,
    /// Function number (0..8).
    pub func: u8,
}

/// How configuration space is reached.
#[derive(Clone, Copy)]
pub enum Access {
    /// Memory-mapped (ECAM) region of bus 0.
    Ecam(Mmio),
    /// Legacy configuration mechanism #1 (ports 0xCF8/0xCFC).
    Ports,
}

/// The ECAM base of segment 0, bus 0 from an MCFG table: (base, start bus, end bus).
pub fn mcfg_bus0(mcfg: &[u8]) -> Option<u64> {
    let mut off = 44;
    while let (Some(base), Some(seg), Some(start), Some(end)) = (
        u64_at(mcfg, off),
        u16_at(mcfg, off + 8),
        u8_at(mcfg, off + 10),
        u8_at(mcfg, off + 11),
    ) {
        if seg == 0 && start == 0 && end >= start && base != 0 {
            return Some(base);
        }
        off += 16;
    }
    None
}

impl Access {
    /// ECAM for bus 0 at `base`, if it can be mapped; else port access.
    pub fn new(ecam_base: Option<u64>) -> Self {
        match ecam_base.and_then(|b| Mmio::map(b, 1 << 20)) {
            Some(m) => Access::Ecam(m),
            None => Access::Ports,
        }
    }

    /// Spelling for the marker.
    pub fn name(self) -> &'static [u8] {
        match self {
            Access::Ecam(_) => b"ecam",
            Access::Ports => b"ports",
        }
    }

    fn addr(bdf: Bdf, off: u16) -> u32 {
        0x8000_0000
            | (u32::from(bdf.dev) << 11)
            | (u32::from(bdf.func) << 8)
            | u32::from(off & 0xfc)
    }

    fn ecam_off(bdf: Bdf, off: u16) -> u64 {
        (u64::from(bdf.dev) << 15) | (u64::from(bdf.func) << 12) | u64::from(off & 0xffc)
    }

    /// Reads the dword at `off` (4-byte aligned).
    pub fn r32(self, bdf: Bdf, off: u16) -> u32 {
        match self {
            Access::Ecam(m) => m.r32(Self::ecam_off(bdf, off)),
            Access::Ports => {
                outl(0xcf8, Self::addr(bdf, off));
                inl(0xcfc)
            }
        }
    }

    /// Writes the dword at `off` (4-byte aligned).
    pub fn w32(self, bdf: Bdf, off: u16, v: u32) {
        match self {
            Access::Ecam(m) => m.w32(Self::ecam_off(bdf, off), v),
            Access::Ports => {
                outl(0xcf8, Self::addr(bdf, off));
                outl(0xcfc, v);
            }
        }
    }

    /// Reads the byte at `off`.
    pub fn r8(self, bdf: Bdf, off: u16) -> u8 {
        (self.r32(bdf, off & !3) >> ((off & 3) * 8)) as u8
    }

    /// Reads the word at `off` (2-byte aligned).
    pub fn r16(self, bdf: Bdf, off: u16) -> u16 {
        (self.r32(bdf, off & !3) >> ((off & 2) * 8)) as u16
    }

    /// Sets bits in the command register (memory space, bus master) without touching status.
    pub fn enable(self, bdf: Bdf, bits: u16) {
        let cmd = self.r16(bdf, 4) | bits;
        // Writing 0 to the status half leaves its write-1-to-clear bits alone.
        self.w32(bdf, 4, u32::from(cmd));
    }
}

/// One function found on bus 0.
#[derive(Clone, Copy, Debug)]
pub struct Function {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Header type (bit 7 masked off).
    pub header: u8,
}

/// Maximum functions remembered.
pub const MAX_FUNCS: usize = 32;

/// Enumerates bus 0; returns the number of functions written to `out`.
pub fn enumerate(acc: Access, out: &mut [Option<Function>; MAX_FUNCS]) -> usize {
    let mut n = 0;
    for dev in 0..32u8 {
        for func in 0..8u8 {
            let bdf = Bdf { dev, func };
            let id = acc.r32(bdf, 0);
            let vendor = id as u16;
            if vendor == 0xffff || vendor == 0 {
                if func == 0 {
                    break;
                }
                continue;
            }
            let header = acc.r8(bdf, 0x0e);
            if let Some(slot) = out.get_mut(n) {
                *slot = Some(Function {
                    bdf,
                    vendor,
                    device: (id >> 16) as u16,
                    header: header & 0x7f,
                });
                n += 1;
            }
            if func == 0 && header & 0x80 == 0 {
                break;
            }
        }
    }
    n
}

/// A decoded memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Base address (0 = unassigned).
    pub addr: u64,
    /// Size in bytes (0 if not sized).
    pub size: u64,
    /// 64-bit BAR (occupies two slots).
    pub wide: bool,
}

/// Decodes BAR `i` of a type-0 header from its raw dwords (`lo`, and `hi` for 64-bit BARs).
/// `None` for I/O BARs.
pub fn decode_bar(lo: u32, hi: u32) -> Option<Bar> {
    if lo & 1 != 0 {
        return None;
    }
    let wide = (lo >> 1) & 3 == 2;
    let addr = u64::from(lo & !0xf) | if wide { u64::from(hi) << 32 } else { 0 };
    Some(Bar {
        addr,
        size: 0,
        wide,
    })
}

/// Size of a memory BAR from the value read back after writing all ones.
pub fn bar_size(mask_lo: u32, mask_hi: u32, wide: bool) -> u64 {
    let mask = u64::from(mask_lo & !0xf)
        | if wide {
            u64::from(mask_hi) << 32
        } else {
            0xffff_ffff_0000_0000
        };
    (!mask).wrapping_add(1)
}

/// Reads memory BAR `i` (0..6) of a type-0 function, sizing it.
pub fn read_bar(acc: Access, bdf: Bdf, i: u8) -> Option<Bar> {
    if i >= 6 {
        return None;
    }
    let off = 0x10 + u16::from(i) * 4;
    let lo = acc.r32(bdf, off);
    let wide_guess = lo & 1 == 0 && (lo >> 1) & 3 == 2;
    let hi = if wide_guess && i < 5 {
        acc.r32(bdf, off + 4)
    } else {
        0
    };
    let mut bar = decode_bar(lo, hi)?;
    // Size it with memory decoding off.
    let cmd = acc.r16(bdf, 4);
    acc.w32(bdf, 4, u32::from(cmd & !2));
    acc.w32(bdf, off, !0);
    let mlo = acc.r32(bdf, off);
    let mhi = if bar.wide {
        acc.w32(bdf, off + 4, !0);
        let v = acc.r32(bdf, off + 4);
        acc.w32(bdf, off + 4, hi);
        v
    } else {
        0
    };
    acc.w32(bdf, off, lo);
    acc.w32(bdf, 4, u32::from(cmd));
    bar.size = if mlo & !0xf == 0 && mhi == 0 {
        0
    } else {
        bar_size(mlo, mhi, bar.wide)
    };
    Some(bar)
}

/// Programs memory BAR `i` with `addr`.
pub fn write_bar(acc: Access, bdf: Bdf, i: u8, bar: Bar, addr: u64) {
    let off = 0x10 + u16::from(i) * 4;
    let flags = acc.r32(bdf, off) & 0xf;
    acc.w32(bdf, off, (addr as u32 & !0xf) | flags);
    if bar.wide {
        acc.w32(bdf, off + 4, (addr >> 32) as u32);
    }
}

/// Capability offsets of a function (list walk bounded to 48 entries).
pub fn capabilities(acc: Access, bdf: Bdf) -> impl Iterator<Item = u16> {
    let has_list = acc.r16(bdf, 6) & 0x10 != 0;
    let mut next = if has_list {
        u16::from(acc.r8(bdf, 0x34) & 0xfc)
    } else {
        0
    };
    let mut left = 48;
    core::iter::from_fn(move || {
        if next < 0x40 || left == 0 {
            return None;
        }
        left -= 1;
        let at = next;
        next = u16::from(acc.r8(bdf, at + 1) & 0xfc);
        Some(at)
    })
}

/// Next free address for a BAR of `size` (power of two) at or above `cursor`, avoiding `used`.
pub fn place(cursor: u64, size: u64, used: &[(u64, u64)]) -> Option<u64> {
    let size = size.max(0x1000);
    let mut at = cursor.checked_add(size - 1)? & !(size - 1);
    for _ in 0..=used.len() {
        let hit = used
            .iter()
            .find(|&&(b, l)| at < b.saturating_add(l) && b < at.saturating_add(size));
        match hit {
            Some(&(b, l)) => at = b.checked_add(l)?.checked_add(size - 1)? & !(size - 1),
            None => return Some(at),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcfg_finds_segment0_bus0() {
        let mut t = vec![0u8; 44];
        let mut e = |base: u64, seg: u16, s: u8, end: u8| {
            t.extend_from_slice(&base.to_le_bytes());
            t.extend_from_slice(&seg.to_le_bytes());
            t.extend_from_slice(&[s, end, 0, 0, 0, 0]);
        };
        e(0xc000_0000, 1, 0, 255);
        e(0xb000_0000, 0, 0, 255);
        assert_eq!(mcfg_bus0(&t), Some(0xb000_0000));
        assert_eq!(mcfg_bus0(&t[..60]), None);
    }

    #[test]
    fn bars_decode_and_size() {
        assert_eq!(decode_bar(0xc001, 0), None);
        let b = decode_bar(0xfe00_000c, 0x1).unwrap();
        assert_eq!((b.addr, b.wide), (0x1_fe00_0000, true));
        assert_eq!(bar_size(0xffffc00c, 0xffff_ffff, true), 0x4000);
        assert_eq!(bar_size(0xfffff000, 0, false), 0x1000);
    }

    #[test]
    fn place_skips_used_ranges() {
        let used = [(0xc000_0000, 0x1000), (0xc000_4000, 0x4000)];
        assert_eq!(place(0xc000_0000, 0x4000, &used), Some(0xc000_8000));
        assert_eq!(place(0xc000_0000, 0x1000, &used), Some(0xc000_1000));
        assert_eq!(place(u64::MAX - 10, 0x1000, &[]), None);
    }
}
