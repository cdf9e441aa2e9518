//! A userspace I/O APIC for KVM's split irqchip (the local APICs stay in KVM, the IOAPIC, PIC
//! and PIT do not exist there). 24 pins, 82093AA-style registers behind the MMIO window at
//! 0xFEC00000: IOREGSEL (0x00) selects a register, IOWIN (0x10) reads or writes it.
//!
//! | index | register | access |
//! |---|---|---|
//! | 0x00 | ID, bits 24..27 | read/write |
//! | 0x01 | VERSION = 0x00170011 (24 entries, version 0x11) | read-only |
//! | 0x02 | ARB, bits 24..27 = the ID | read-only |
//! | 0x10 + 2n, 0x11 + 2n | redirection entry n, low and high dword | see [`RTE_WRITABLE`] |
//!
//! Delivery follows what QEMU's split-irqchip IOAPIC does with KVM: every redirection entry is
//! turned into an MSI message ([`msi_for`]) and installed as the GSI route of its pin through
//! [`IoapicRouting`], so a device's irqfd on GSI `n` reaches the vCPUs without a VM exit and a
//! masked pin has no route. Lines the model drives itself ([`Ioapic::set_irq`]) are delivered
//! with [`IoapicRouting::inject`]; level-triggered ones set remote IRR until the guest's EOI of
//! their vector comes back ([`Ioapic::end_of_interrupt`], `KVM_EXIT_IOAPIC_EOI` in the VMM).
//! Every guest access is bounds-checked: bad offsets and sizes read as zero and writes to them
//! are dropped.

use crate::bus::MmioDevice;
use crate::interrupt::InterruptError;
use std::sync::Arc;

/// Guest-physical base of the IOAPIC window.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Length of the window the device claims (one page, as on q35).
pub const IOAPIC_MMIO_LEN: u64 = 0x1000;
/// Number of pins (and of redirection entries).
pub const IOAPIC_PINS: usize = 24;
/// The VERSION register: maximum redirection entry 23 in bits 16..23, version 0x11.
pub const IOAPIC_VERSION: u32 = (((IOAPIC_PINS as u32) - 1) << 16) | 0x11;

/// MMIO offset of the register selector.
pub const IOREGSEL: u64 = 0x00;
/// MMIO offset of the data window.
pub const IOWIN: u64 = 0x10;

/// Register indexes.
pub const REG_ID: u8 = 0x00;
pub const REG_VERSION: u8 = 0x01;
pub const REG_ARB: u8 = 0x02;
/// First redirection-table index (entry n: low dword at 0x10 + 2n, high at 0x11 + 2n).
pub const REG_REDTBL: u8 = 0x10;

/// Redirection entry fields.
pub const RTE_VECTOR: u64 = 0xff;
pub const RTE_DELIVERY_MODE_SHIFT: u32 = 8;
pub const RTE_DEST_LOGICAL: u64 = 1 << 11;
pub const RTE_DELIVERY_STATUS: u64 = 1 << 12;
pub const RTE_ACTIVE_LOW: u64 = 1 << 13;
pub const RTE_REMOTE_IRR: u64 = 1 << 14;
pub const RTE_LEVEL: u64 = 1 << 15;
pub const RTE_MASKED: u64 = 1 << 16;
/// Bits 8..14 of a 15-bit destination APIC ID (KVM's extended destination ID, which Linux
/// uses when the hypervisor offers `KVM_FEATURE_MSI_EXT_DEST_ID`).
pub const RTE_EXT_DEST_SHIFT: u32 = 49;
/// Destination APIC ID (physical mode) or logical destination.
pub const RTE_DEST_SHIFT: u32 = 56;
/// The bits a guest write changes: vector, delivery mode, destination mode, polarity,
/// trigger mode, mask, extended destination and destination. Delivery status and remote IRR
/// are read-only; bits 17..48 are reserved and read as zero.
pub const RTE_WRITABLE: u64 = RTE_VECTOR
    | (7 << RTE_DELIVERY_MODE_SHIFT)
    | RTE_DEST_LOGICAL
    | RTE_ACTIVE_LOW
    | RTE_LEVEL
    | RTE_MASKED
    | (0x7f << RTE_EXT_DEST_SHIFT)
    | (0xff << RTE_DEST_SHIFT);
/// The value of every entry at reset: masked, everything else zero.
pub const RTE_RESET: u64 = RTE_MASKED;

/// Delivery modes (bits 8..10).
pub const DELIVERY_FIXED: u8 = 0;
pub const DELIVERY_LOWEST_PRIORITY: u8 = 1;
pub const DELIVERY_SMI: u8 = 2;
pub const DELIVERY_NMI: u8 = 4;
pub const DELIVERY_INIT: u8 = 5;
pub const DELIVERY_EXTINT: u8 = 7;

/// The local APICs' MSI address window.
pub const MSI_ADDRESS_BASE: u64 = 0xfee0_0000;
const MSI_ADDR_DEST_LOGICAL: u64 = 1 << 2;
const MSI_ADDR_EXT_DEST_SHIFT: u32 = 5;
const MSI_ADDR_DEST_SHIFT: u32 = 12;
const MSI_DATA_DELIVERY_SHIFT: u32 = 8;
const MSI_DATA_LEVEL: u32 = 1 << 15;

/// One MSI message: what a write of `data` to `address` in the APIC window delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// The MSI message a redirection entry delivers, or `None` when the pin has no route: masked,
/// or a delivery mode that a message cannot carry here (ExtINT needs a PIC, which the split
/// irqchip does not have; modes 3 and 6 are reserved).
pub fn msi_for(rte: u64) -> Option<MsiMessage> {
    if rte & RTE_MASKED != 0 {
        return None;
    }
    let mode = ((rte >> RTE_DELIVERY_MODE_SHIFT) & 7) as u8;
    match mode {
        DELIVERY_FIXED | DELIVERY_LOWEST_PRIORITY | DELIVERY_SMI | DELIVERY_NMI | DELIVERY_INIT => {
        }
        _ => return None,
    }
    let dest = (rte >> RTE_DEST_SHIFT) & 0xff;
    let ext_dest = (rte >> RTE_EXT_DEST_SHIFT) & 0x7f;
    let mut address =
        MSI_ADDRESS_BASE | dest << MSI_ADDR_DEST_SHIFT | ext_dest << MSI_ADDR_EXT_DEST_SHIFT;
    if rte & RTE_DEST_LOGICAL != 0 {
        address |= MSI_ADDR_DEST_LOGICAL;
    }
    let mut data = (rte & RTE_VECTOR) as u32 | u32::from(mode) << MSI_DATA_DELIVERY_SHIFT;
    if rte & RTE_LEVEL != 0 {
        data |= MSI_DATA_LEVEL;
    }
    Some(MsiMessage { address, data })
}

/// What the IOAPIC needs from the hypervisor: the GSI route of each pin and direct injection.
pub trait IoapicRouting: Send + Sync {
    /// Makes GSI `pin` deliver `msi`, or removes its route (`None`).
    fn set_route(&self, pin: u32, msi: Option<MsiMessage>) -> Result<(), InterruptError>;
    /// Delivers `msi` once, now.
    fn inject(&self, msi: MsiMessage) -> Result<(), InterruptError>;
}

/// The IOAPIC's state.
pub struct Ioapic {
    id: u8,
    select: u8,
    rte: [u64; IOAPIC_PINS],
    /// The route installed for each pin (what `routing` was last told).
    installed: [Option<MsiMessage>; IOAPIC_PINS],
    /// Lines asserted through [`Ioapic::set_irq`].
    asserted: u32,
    routing: Arc<dyn IoapicRouting>,
    delivered: u64,
    eois: u64,
    route_updates: u64,
}

impl Ioapic {
    /// An IOAPIC with ID 0 and every entry masked (no routes).
    pub fn new(routing: Arc<dyn IoapicRouting>) -> Self {
        Ioapic {
            id: 0,
            select: 0,
            rte: [RTE_RESET; IOAPIC_PINS],
            installed: [None; IOAPIC_PINS],
            asserted: 0,
            routing,
            delivered: 0,
            eois: 0,
            route_updates: 0,
        }
    }

    /// Redirection entry `pin` (0 for a pin that does not exist).
    pub fn rte(&self, pin: usize) -> u64 {
        self.rte.get(pin).copied().unwrap_or(0)
    }

    /// The route installed for `pin`.
    pub fn route(&self, pin: usize) -> Option<MsiMessage> {
        self.installed.get(pin).copied().flatten()
    }

    /// Route changes the hypervisor took (installs and removals).
    pub fn route_updates(&self) -> u64 {
        self.route_updates
    }

    /// Pins with a route now.
    pub fn routes_installed(&self) -> u64 {
        self.installed.iter().filter(|r| r.is_some()).count() as u64
    }

    /// Messages the model injected itself (lines driven through [`Ioapic::set_irq`]).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// EOIs of level-triggered vectors the local APICs forwarded.
    pub fn eois(&self) -> u64 {
        self.eois
    }

    /// Drives line `pin` (asserted = `level`). An edge pin delivers on the rising edge, a level
    /// pin whenever it is asserted, unmasked and its remote IRR is clear. Pins past 23 are
    /// ignored.
    pub fn set_irq(&mut self, pin: usize, level: bool) {
        if pin >= IOAPIC_PINS {
            tracing::debug!(pin, "IOAPIC: line of a pin that does not exist");
            return;
        }
        let bit = 1u32 << pin;
        let was = self.asserted & bit != 0;
        if level {
            self.asserted |= bit;
        } else {
            self.asserted &= !bit;
        }
        let rte = self.rte[pin];
        if rte & RTE_LEVEL != 0 {
            if level {
                self.service_level(pin);
            }
        } else if level && !was {
            self.deliver(pin);
        }
    }

    /// The guest's EOI of `vector` (the local APIC saw the EOI of a level-triggered
    /// interrupt): clears remote IRR of every level entry with that vector and delivers again
    /// where the line is still asserted.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        self.eois += 1;
        tracing::trace!(vector, "IOAPIC: EOI");
        for pin in 0..IOAPIC_PINS {
            let rte = self.rte[pin];
            if rte & RTE_REMOTE_IRR != 0 && (rte & RTE_VECTOR) as u8 == vector {
                self.rte[pin] &= !RTE_REMOTE_IRR;
                self.service_level(pin);
            }
        }
    }

    /// Delivers a pending level interrupt of `pin` if it may go now.
    fn service_level(&mut self, pin: usize) {
        let rte = self.rte[pin];
        let pending = self.asserted & (1 << pin) != 0;
        let may = rte & RTE_LEVEL != 0 && rte & (RTE_MASKED | RTE_REMOTE_IRR) == 0 && pending;
        if may && self.deliver(pin) {
            self.rte[pin] |= RTE_REMOTE_IRR;
        }
    }

    /// Injects the message of `pin`; false when it has none or the hypervisor refused.
    fn deliver(&mut self, pin: usize) -> bool {
        let Some(msi) = msi_for(self.rte[pin]) else {
            return false;
        };
        match self.routing.inject(msi) {
            Ok(()) => {
                self.delivered += 1;
                true
            }
            Err(e) => {
                tracing::warn!(pin, error = %e, "IOAPIC: cannot inject the interrupt");
                false
            }
        }
    }

    fn read_register(&self, index: u8) -> u32 {
        match index {
            REG_ID => u32::from(self.id) << 24,
            REG_VERSION => IOAPIC_VERSION,
            REG_ARB => u32::from(self.id) << 24,
            i if i >= REG_REDTBL => match self.rte.get(usize::from((i - REG_REDTBL) / 2)) {
                Some(&e) if i & 1 == 0 => e as u32,
                Some(&e) => (e >> 32) as u32,
                None => 0,
            },
            _ => 0,
        }
    }

    fn write_register(&mut self, index: u8, value: u32) {
        match index {
            REG_ID => self.id = ((value >> 24) & 0xf) as u8,
            i if i >= REG_REDTBL => {
                let pin = usize::from((i - REG_REDTBL) / 2);
                if pin >= IOAPIC_PINS {
                    tracing::debug!(index, "IOAPIC: write to a register that does not exist");
                    return;
                }
                let old = self.rte[pin];
                let raw = if i & 1 == 0 {
                    (old & !0xffff_ffff) | u64::from(value)
                } else {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                };
                let mut new = (raw & RTE_WRITABLE) | (old & !RTE_WRITABLE & RTE_REMOTE_IRR);
                // An edge entry has no EOI to wait for: remote IRR goes (as KVM's IOAPIC and
                // QEMU's do, which guests rely on to clear a stuck bit).
                if new & RTE_LEVEL == 0 {
                    new &= !RTE_REMOTE_IRR;
                }
                self.rte[pin] = new;
                self.update_route(pin);
                self.service_level(pin);
            }
            // VERSION and ARB are read-only.
            _ => {}
        }
    }

    /// Tells the hypervisor the route of `pin` when it changed.
    fn update_route(&mut self, pin: usize) {
        let want = msi_for(self.rte[pin]);
        if want == self.installed[pin] {
            return;
        }
        match self.routing.set_route(pin as u32, want) {
            Ok(()) => {
                self.installed[pin] = want;
                self.route_updates += 1;
            }
            Err(e) => tracing::warn!(pin, error = %e, "IOAPIC: cannot update the GSI route"),
        }
    }
}

/// Copies `value`'s little-endian bytes from `at` into `data`; bytes past the dword read 0.
fn read_dword_bytes(value: u32, at: usize, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(at + i).copied().unwrap_or(0);
    }
}

impl MmioDevice for Ioapic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.is_empty() || data.len() > 8 {
            data.fill(0);
            return;
        }
        match offset {
            o if (IOREGSEL..IOREGSEL + 4).contains(&o) => {
                read_dword_bytes(u32::from(self.select), (o - IOREGSEL) as usize, data)
            }
            o if (IOWIN..IOWIN + 4).contains(&o) => {
                read_dword_bytes(self.read_register(self.select), (o - IOWIN) as usize, data)
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (IOREGSEL, 1..=8) => self.select = data[0],
            (IOWIN, 4) => {
                let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.write_register(self.select, value);
            }
            (o, n) => tracing::debug!(
                offset = o,
                len = n,
                "IOAPIC: write dropped (registers take dword writes at 0x00 and 0x10)"
            ),
        }
    }
}

#[cfg(test)]
#[path = "ioapic_tests.rs"]
mod tests;
