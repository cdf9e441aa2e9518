//! Tier A tests of the IOAPIC: register semantics through the MMIO window, the RTE -> MSI
//! encoding, routes for masked and unmasked pins, level lines with remote IRR and EOI by
//! vector, and hostile offsets and sizes.

use super::*;
use std::sync::Mutex;

/// Records what the IOAPIC asked of the hypervisor; `fail` makes every call fail.
#[derive(Default)]
struct Recorder {
    routes: Mutex<Vec<(u32, Option<MsiMessage>)>>,
    injected: Mutex<Vec<MsiMessage>>,
    fail: std::sync::atomic::AtomicBool,
}

impl Recorder {
    fn err(&self) -> Result<(), InterruptError> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(InterruptError::Hypervisor {
                what: "test",
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        Ok(())
    }

    fn routes(&self) -> Vec<(u32, Option<MsiMessage>)> {
        self.routes.lock().unwrap().clone()
    }

    fn injected(&self) -> Vec<MsiMessage> {
        self.injected.lock().unwrap().clone()
    }
}

impl IoapicRouting for Recorder {
    fn set_route(&self, pin: u32, msi: Option<MsiMessage>) -> Result<(), InterruptError> {
        self.err()?;
        self.routes.lock().unwrap().push((pin, msi));
        Ok(())
    }

    fn inject(&self, msi: MsiMessage) -> Result<(), InterruptError> {
        self.err()?;
        self.injected.lock().unwrap().push(msi);
        Ok(())
    }
}

fn ioapic() -> (Ioapic, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    (Ioapic::new(rec.clone()), rec)
}

fn select(io: &mut Ioapic, index: u8) {
    io.write(IOREGSEL, &[index]);
}

fn read_reg(io: &mut Ioapic, index: u8) -> u32 {
    select(io, index);
    let mut b = [0u8; 4];
    io.read(IOWIN, &mut b);
    u32::from_le_bytes(b)
}

fn write_reg(io: &mut Ioapic, index: u8, value: u32) {
    select(io, index);
    io.write(IOWIN, &value.to_le_bytes());
}

fn write_rte(io: &mut Ioapic, pin: u8, value: u64) {
    // High half first, as Linux does, so the entry is complete when the low half unmasks it.
    write_reg(io, REG_REDTBL + 2 * pin + 1, (value >> 32) as u32);
    write_reg(io, REG_REDTBL + 2 * pin, value as u32);
}

fn read_rte(io: &mut Ioapic, pin: u8) -> u64 {
    let lo = read_reg(io, REG_REDTBL + 2 * pin);
    let hi = read_reg(io, REG_REDTBL + 2 * pin + 1);
    u64::from(lo) | u64::from(hi) << 32
}

#[test]
fn version_id_and_arbitration_registers() {
    let (mut io, _) = ioapic();
    assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0011);
    assert_eq!(IOAPIC_VERSION, 0x0017_0011);
    assert_eq!(read_reg(&mut io, REG_ID), 0);
    write_reg(&mut io, REG_ID, 0xffff_ffff);
    assert_eq!(
        read_reg(&mut io, REG_ID),
        0x0f00_0000,
        "only bits 24..27 hold the ID"
    );
    assert_eq!(
        read_reg(&mut io, REG_ARB),
        0x0f00_0000,
        "ARB follows the ID"
    );
    write_reg(&mut io, REG_VERSION, 0);
    write_reg(&mut io, REG_ARB, 0);
    assert_eq!(
        read_reg(&mut io, REG_VERSION),
        0x0017_0011,
        "VERSION is read-only"
    );
    assert_eq!(read_reg(&mut io, REG_ARB), 0x0f00_0000, "ARB is read-only");
    // Unused indexes read as zero.
    for index in [0x03, 0x0f, 0x40, 0xff] {
        assert_eq!(read_reg(&mut io, index), 0, "index {index:#x}");
    }
}

#[test]
fn ioregsel_reads_back_and_takes_the_low_byte() {
    let (mut io, _) = ioapic();
    io.write(IOREGSEL, &0x1234_5611u32.to_le_bytes());
    let mut b = [0u8; 4];
    io.read(IOREGSEL, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x11);
    assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0011);
}

#[test]
fn entries_reset_masked_and_keep_only_writable_bits() {
    let (mut io, _) = ioapic();
    for pin in 0..IOAPIC_PINS as u8 {
        assert_eq!(read_rte(&mut io, pin), RTE_MASKED, "pin {pin}");
    }
    write_rte(&mut io, 5, u64::MAX);
    let v = read_rte(&mut io, 5);
    assert_eq!(v, RTE_WRITABLE);
    assert_eq!(
        v & (RTE_DELIVERY_STATUS | RTE_REMOTE_IRR),
        0,
        "read-only bits stay 0"
    );
    assert_eq!(v >> 17 & ((1 << 32) - 1), 0, "bits 17..48 are reserved");
    // The halves are independent.
    write_reg(&mut io, REG_REDTBL + 2 * 5 + 1, 0);
    assert_eq!(read_rte(&mut io, 5), RTE_WRITABLE & 0xffff_ffff);
    // Entries past 23 do not exist.
    write_reg(&mut io, REG_REDTBL + 2 * 24, 0x30);
    assert_eq!(read_reg(&mut io, REG_REDTBL + 2 * 24), 0);
}

#[test]
fn rte_becomes_the_msi_message() {
    // Fixed, physical, edge, vector 0x31 to APIC 3.
    let rte = 0x31 | 3u64 << 56;
    assert_eq!(
        msi_for(rte),
        Some(MsiMessage {
            address: 0xfee0_3000,
            data: 0x31
        })
    );
    // Lowest priority, logical destination 0x0f, level-triggered.
    let rte = 0x41 | 1 << 8 | RTE_DEST_LOGICAL | RTE_LEVEL | 0x0fu64 << 56;
    assert_eq!(
        msi_for(rte),
        Some(MsiMessage {
            address: 0xfee0_f004,
            data: 0x8141
        })
    );
    // NMI, and a 15-bit destination (APIC 0x1a5: bits 8..14 in the extended field).
    let rte = 4 << 8 | 0xa5u64 << 56 | 0x01u64 << 49;
    assert_eq!(
        msi_for(rte),
        Some(MsiMessage {
            address: 0xfee0_0000 | 0xa5 << 12 | 0x01 << 5,
            data: 0x400
        })
    );
    // Polarity does not travel in the message.
    assert_eq!(msi_for(0x31 | RTE_ACTIVE_LOW), msi_for(0x31));
    // Masked, ExtINT and the reserved modes get no route.
    assert_eq!(msi_for(0x31 | RTE_MASKED), None);
    for mode in [3u64, 6, 7] {
        assert_eq!(msi_for(0x31 | mode << 8), None, "mode {mode}");
    }
    for mode in [0u64, 1, 2, 4, 5] {
        assert_eq!(
            msi_for(0x31 | mode << 8).unwrap().data >> 8 & 7,
            mode as u32
        );
    }
}

#[test]
fn unmasking_installs_the_route_and_masking_removes_it() {
    let (mut io, rec) = ioapic();
    assert!(rec.routes().is_empty(), "no route at reset");
    write_rte(&mut io, 4, 0x30 | 1u64 << 56);
    let msg = MsiMessage {
        address: 0xfee0_1000,
        data: 0x30,
    };
    assert_eq!(rec.routes(), [(4, Some(msg))]);
    assert_eq!(io.route(4), Some(msg));
    // Rewriting the same value changes nothing.
    write_rte(&mut io, 4, 0x30 | 1u64 << 56);
    assert_eq!(rec.routes().len(), 1);
    write_rte(&mut io, 4, 0x30 | 1u64 << 56 | RTE_MASKED);
    assert_eq!(rec.routes()[1], (4, None));
    assert_eq!(io.route(4), None);
    assert_eq!(io.route_updates(), 2);
    assert_eq!(io.routes_installed(), 0);
    // A new vector while unmasked replaces the route.
    write_rte(&mut io, 4, 0x31);
    write_rte(&mut io, 4, 0x32);
    assert_eq!(
        rec.routes()[2..],
        [
            (
                4,
                Some(MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x31
                })
            ),
            (
                4,
                Some(MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x32
                })
            )
        ]
    );
}

#[test]
fn a_failed_route_update_is_retried_on_the_next_write() {
    let (mut io, rec) = ioapic();
    rec.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    write_rte(&mut io, 9, 0x40);
    assert_eq!(io.route(9), None, "not recorded as installed");
    rec.fail.store(false, std::sync::atomic::Ordering::Relaxed);
    write_rte(&mut io, 9, 0x40);
    assert_eq!(io.route(9).map(|m| m.data), Some(0x40));
}

#[test]
fn edge_lines_deliver_on_rising_edges_only_when_unmasked() {
    let (mut io, rec) = ioapic();
    io.set_irq(3, true);
    assert!(rec.injected().is_empty(), "masked: dropped");
    io.set_irq(3, false);
    write_rte(&mut io, 3, 0x50);
    io.set_irq(3, true);
    io.set_irq(3, true);
    assert_eq!(rec.injected().len(), 1, "one rising edge");
    io.set_irq(3, false);
    io.set_irq(3, true);
    assert_eq!(
        rec.injected(),
        vec![
            MsiMessage {
                address: 0xfee0_0000,
                data: 0x50
            };
            2
        ]
    );
    assert_eq!(
        read_rte(&mut io, 3) & RTE_REMOTE_IRR,
        0,
        "edge has no remote IRR"
    );
    assert_eq!(io.delivered(), 2);
}

#[test]
fn level_lines_hold_remote_irr_until_the_eoi_of_their_vector() {
    let (mut io, rec) = ioapic();
    write_rte(&mut io, 10, 0x61 | RTE_LEVEL);
    io.set_irq(10, true);
    assert_eq!(rec.injected().len(), 1);
    assert_eq!(
        rec.injected()[0].data,
        0x8061,
        "level trigger in the message"
    );
    assert_ne!(read_rte(&mut io, 10) & RTE_REMOTE_IRR, 0);
    // Still asserted, remote IRR set: nothing new.
    io.set_irq(10, true);
    assert_eq!(rec.injected().len(), 1);
    // The EOI of another vector does nothing.
    io.end_of_interrupt(0x62);
    assert_ne!(read_rte(&mut io, 10) & RTE_REMOTE_IRR, 0);
    assert_eq!(rec.injected().len(), 1);
    // Its own EOI with the line still up: delivered again.
    io.end_of_interrupt(0x61);
    assert_eq!(rec.injected().len(), 2);
    assert_ne!(read_rte(&mut io, 10) & RTE_REMOTE_IRR, 0);
    // Line drops, then the EOI: remote IRR clear, nothing delivered.
    io.set_irq(10, false);
    io.end_of_interrupt(0x61);
    assert_eq!(read_rte(&mut io, 10) & RTE_REMOTE_IRR, 0);
    assert_eq!(rec.injected().len(), 2);
    assert_eq!(io.eois(), 3);
    assert_eq!(io.delivered(), 2);
}

#[test]
fn guest_writes_cannot_set_or_clear_remote_irr_except_by_going_edge() {
    let (mut io, _) = ioapic();
    write_rte(&mut io, 2, 0x70 | RTE_LEVEL);
    io.set_irq(2, true);
    assert_ne!(read_rte(&mut io, 2) & RTE_REMOTE_IRR, 0);
    // Rewriting the low half (level, with bit 14 clear) keeps remote IRR.
    write_reg(&mut io, REG_REDTBL + 4, (0x70 | RTE_LEVEL) as u32);
    assert_ne!(read_rte(&mut io, 2) & RTE_REMOTE_IRR, 0);
    // Switching to edge clears it.
    write_reg(&mut io, REG_REDTBL + 4, 0x70);
    assert_eq!(read_rte(&mut io, 2) & RTE_REMOTE_IRR, 0);
    // An edge entry never gets it from a write.
    write_reg(&mut io, REG_REDTBL + 4, 0x70 | RTE_REMOTE_IRR as u32);
    assert_eq!(read_rte(&mut io, 2) & RTE_REMOTE_IRR, 0);
}

#[test]
fn a_level_line_pending_while_masked_is_delivered_on_unmask() {
    let (mut io, rec) = ioapic();
    write_rte(&mut io, 7, 0x44 | RTE_LEVEL | RTE_MASKED);
    io.set_irq(7, true);
    assert!(rec.injected().is_empty());
    write_rte(&mut io, 7, 0x44 | RTE_LEVEL);
    assert_eq!(rec.injected().len(), 1);
    assert_ne!(read_rte(&mut io, 7) & RTE_REMOTE_IRR, 0);
}

#[test]
fn extint_pins_neither_route_nor_deliver() {
    let (mut io, rec) = ioapic();
    write_rte(&mut io, 0, 7 << 8);
    io.set_irq(0, true);
    assert!(rec.routes().is_empty());
    assert!(rec.injected().is_empty());
}

#[test]
fn bad_offsets_sizes_and_pins_never_panic() {
    let (mut io, rec) = ioapic();
    write_rte(&mut io, 1, 0x33);
    let before = read_rte(&mut io, 1);
    for offset in [
        1,
        2,
        3,
        4,
        8,
        0xc,
        0x11,
        0x13,
        0x14,
        0x20,
        0x40,
        0xfff,
        0x1000,
        u64::MAX,
    ] {
        for len in [0usize, 1, 2, 3, 4, 8, 16] {
            let mut buf = vec![0xaau8; len];
            io.read(offset, &mut buf);
            if !(offset < 4 || (0x10..0x14).contains(&offset)) || len > 8 {
                assert!(buf.iter().all(|&b| b == 0), "read {offset:#x}+{len}");
            }
            io.write(offset, &vec![0xff; len]);
        }
    }
    // Sub-dword and oversize writes to IOWIN are dropped.
    select(&mut io, REG_REDTBL + 2);
    for len in [1usize, 2, 3, 8] {
        io.write(IOWIN, &vec![0u8; len]);
    }
    io.write(IOWIN, &[]);
    io.write(IOREGSEL, &[]);
    assert_eq!(read_rte(&mut io, 1), before);
    // Partial reads return the dword's bytes.
    select(&mut io, REG_VERSION);
    let mut two = [0u8; 2];
    io.read(IOWIN + 2, &mut two);
    assert_eq!(two, [0x17, 0x00]);
    let mut eight = [0xaau8; 8];
    io.read(IOWIN, &mut eight);
    assert_eq!(eight, [0x11, 0, 0x17, 0, 0, 0, 0, 0]);
    // Lines and EOIs for pins and vectors that do not exist.
    io.set_irq(24, true);
    io.set_irq(usize::MAX, true);
    io.end_of_interrupt(0xff);
    assert_eq!(rec.injected().len(), 0);
    assert_eq!(io.rte(99), 0);
    assert_eq!(io.route(99), None);
}
