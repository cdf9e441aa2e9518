//! Tests of the configuration space helper, the bus and its access mechanisms.

use std::sync::{Arc, Mutex};

use super::*;
use crate::bus::{MmioDevice, PioDevice};

const W32: PciWindow = PciWindow {
    base: 0xc000_0000,
    size: 0x2000_0000,
};

fn header() -> PciHeader {
    PciHeader {
        vendor_id: 0x1234,
        device_id: 0x5678,
        revision: 3,
        class_code: 0x02_00_00,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x1100,
    }
}

/// A device whose memory BARs are plain RAM.
struct RamDevice {
    config: PciConfiguration,
    ram: Vec<Vec<u8>>,
}

impl RamDevice {
    fn new(bars: &[(u64, PciBarKind)]) -> Arc<Mutex<Self>> {
        let mut config = PciConfiguration::new(&header());
        let mut index = 0;
        let mut ram = vec![Vec::new(); NUM_BARS];
        for &(size, kind) in bars {
            config.add_bar(index, size, kind, false).unwrap();
            ram[usize::from(index)] = vec![0; size as usize];
            index += if kind == PciBarKind::Memory64 { 2 } else { 1 };
        }
        Arc::new(Mutex::new(Self { config, ram }))
    }
}

impl PciDevice for RamDevice {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data)
    }
    fn write_config(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data)
    }
    fn bars(&self) -> Vec<PciBarInfo> {
        self.config.bars()
    }
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let o = offset as usize;
        data.copy_from_slice(&self.ram[usize::from(bar)][o..o + data.len()]);
    }
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let o = offset as usize;
        self.ram[usize::from(bar)][o..o + data.len()].copy_from_slice(data);
    }
}

fn rd32(c: &PciConfiguration, off: u16) -> u32 {
    let mut b = [0u8; 4];
    c.read(off, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn bar_sizing_protocol_32_and_64_bit() {
    let mut c = PciConfiguration::new(&header());
    c.add_bar(0, 0x1000, PciBarKind::Memory32, false).unwrap();
    c.add_bar(1, 0x4_0000_0000, PciBarKind::Memory64, true)
        .unwrap();
    c.add_bar(3, 0x20, PciBarKind::Io, false).unwrap();
    for reg in [0x10u16, 0x14, 0x18, 0x1c] {
        c.write(reg, &[0xff; 4]);
    }
    assert_eq!(rd32(&c, 0x10), 0xffff_f000);
    // 64-bit, prefetchable: type bits 0b10 and bit 3 survive; size 16 GiB spans both halves.
    assert_eq!(rd32(&c, 0x14), 0x0000_000c);
    assert_eq!(rd32(&c, 0x18), 0xffff_fffc);
    assert_eq!(rd32(&c, 0x1c), 0xffff_ffe1);
    // Unimplemented BARs and the expansion ROM size as zero.
    c.write(0x20, &[0xff; 4]);
    c.write(0x30, &[0xff; 4]);
    assert_eq!((rd32(&c, 0x20), rd32(&c, 0x30)), (0, 0));

    c.write(0x14, &0x8000_0000u32.to_le_bytes());
    c.write(0x18, &0x0000_0012u32.to_le_bytes());
    let b = c.bars();
    assert_eq!(
        b[1].addr, 0x10_0000_0000,
        "low bits below the size are not writable"
    );
    assert_eq!(
        (b[1].index, b[1].kind, b[1].prefetchable),
        (1, PciBarKind::Memory64, true)
    );
    assert_eq!(c.bar_address(0), Some(0xffff_f000));
}

#[test]
fn bad_bar_declarations_are_refused() {
    let mut c = PciConfiguration::new(&header());
    c.add_bar(4, 0x1000, PciBarKind::Memory64, false).unwrap();
    assert_eq!(
        c.add_bar(5, 0x1000, PciBarKind::Memory32, false),
        Err(PciError::BarInUse { index: 5 })
    );
    assert_eq!(
        c.add_bar(5, 0x1000, PciBarKind::Memory64, false),
        Err(PciError::BarInUse { index: 5 })
    );
    assert_eq!(
        c.add_bar(6, 0x1000, PciBarKind::Memory32, false),
        Err(PciError::BarInUse { index: 6 })
    );
    assert_eq!(
        c.add_bar(0, 0x1800, PciBarKind::Memory32, false),
        Err(PciError::BarSize {
            index: 0,
            size: 0x1800
        })
    );
    assert_eq!(
        c.add_bar(0, 8, PciBarKind::Memory32, false),
        Err(PciError::BarSize { index: 0, size: 8 })
    );
}

#[test]
fn header_fields_masks_and_bad_accesses() {
    let mut c = PciConfiguration::new(&header());
    c.write(0x00, &[0; 4]);
    assert_eq!(rd32(&c, 0x00), 0x5678_1234, "ids are read-only");
    assert_eq!(rd32(&c, 0x08), 0x0200_0003, "class and revision");
    assert_eq!(rd32(&c, 0x2c), 0x1100_1af4);
    c.write(0x04, &[0xff, 0xff]);
    assert_eq!(c.command(), 0x0547);
    assert!(c.memory_enabled());
    let mut b = [0u8; 1];
    c.read(0x3d, &mut b);
    assert_eq!(b[0], 0, "no INTx pin");
    // Odd sizes and accesses past the end read all ones and write nothing.
    let mut three = [0u8; 3];
    c.read(0, &mut three);
    assert_eq!(three, [0xff; 3]);
    let mut four = [0u8; 4];
    c.read(0xffe, &mut four);
    assert_eq!(four, [0xff; 4]);
    c.read(u16::MAX, &mut b);
    assert_eq!(b[0], 0xff);
    c.write(0x3c, &[1, 2, 3]);
    c.write(0xfff, &[1, 2]);
    c.read(0x3c, &mut b);
    assert_eq!(b[0], 0);
    // Unaligned word access inside the space works.
    c.write(0x3c, &[0x0b]);
    let mut w = [0u8; 2];
    c.read(0x3b, &mut w);
    assert_eq!(w, [0, 0x0b]);
}

#[test]
fn capability_list_is_chained() {
    let mut c = PciConfiguration::new(&header());
    let a = c
        .add_capability(&[0x09, 0xee, 7, 1, 2], &[0, 0, 0, 0xff, 0])
        .unwrap();
    let b = c.add_capability(&[0x11, 0, 0, 0], &[]).unwrap();
    assert_eq!((a, b), (0x40, 0x48));
    assert_ne!(
        c.read_u16(0x06) & 0x10,
        0,
        "status advertises a capability list"
    );
    assert_eq!(c.read_u16(0x34) & 0xff, 0x40);
    assert_eq!(c.read_u16(a), 0x4809, "next pointer replaced");
    assert_eq!(c.read_u16(b), 0x0011, "last capability ends the list");
    c.write(a + 3, &[0x55]);
    c.write(a + 4, &[0x55]);
    c.write(a + 1, &[0x00]);
    // next (0x48) and length stay; byte 3 is writable, byte 4 is not.
    assert_eq!(c.read_u32(a + 1), 0x0255_0748);
    assert!(matches!(
        c.add_capability(&[1], &[]),
        Err(PciError::CapabilityBody { .. })
    ));
    assert!(matches!(
        c.add_capability(&[0x09; 200], &[]),
        Err(PciError::CapabilitySpace {
            offset: 0x4c,
            len: 200
        })
    ));
}

fn cf8(dev: u8, reg: u8) -> [u8; 4] {
    (0x8000_0000u32 | u32::from(dev) << 11 | u32::from(reg)).to_le_bytes()
}

#[test]
fn port_io_enumerates_host_bridge_and_absent_slots() {
    let bus = Arc::new(Mutex::new(PciBus::new(W32, None)));
    let mut io = PciConfigIo::new(bus.clone());
    let mut d = [0u8; 4];
    io.write(0, &cf8(0, 0));
    io.read(4, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x29c0_8086);
    io.read(0, &mut d);
    assert_eq!(d, cf8(0, 0), "address register reads back");
    io.write(0, &cf8(0, 8));
    io.read(4, &mut d);
    assert_eq!(u32::from_le_bytes(d) >> 8, 0x06_00_00);
    // Byte lanes: 0xCFE reads the upper half of the dword.
    io.write(0, &cf8(0, 0));
    let mut w = [0u8; 2];
    io.read(6, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x29c0);
    // A lane access crossing 0xCFF reads all ones.
    io.read(6, &mut d);
    assert_eq!(d, [0xff; 4]);
    // Absent device, and any access with the enable bit clear, read all ones.
    io.write(0, &cf8(7, 0));
    io.read(4, &mut d);
    assert_eq!(d, [0xff; 4]);
    io.write(0, &[0, 0, 0, 0]);
    io.read(4, &mut d);
    assert_eq!(d, [0xff; 4]);
    // A non-dword write to 0xCF8 is not an address write.
    io.write(0, &cf8(0, 0));
    io.write(1, &[0xff]);
    io.write(0, &[0x12, 0x34]);
    io.read(0, &mut d);
    assert_eq!(d, cf8(0, 0));
}

#[test]
fn ecam_reaches_the_same_functions() {
    let bus = Arc::new(Mutex::new(PciBus::new(W32, None)));
    let slot = lock(&bus)
        .add_device(RamDevice::new(&[(0x1000, PciBarKind::Memory32)]))
        .unwrap();
    assert_eq!(slot, 1);
    let mut ecam = PciConfigMmio::new(bus.clone());
    let mut d = [0u8; 4];
    ecam.read(1 << 15, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x5678_1234);
    ecam.read(1 << 15 | 1 << 12, &mut d);
    assert_eq!(d, [0xff; 4], "function 1 is absent");
    ecam.read(1 << 20 | 1 << 15, &mut d);
    assert_eq!(d, [0xff; 4], "bus 1 is absent");
    ecam.read((1 << 15) + 0xffe, &mut d);
    assert_eq!(d, [0xff; 4], "an access crossing the function's 4 KiB");
    ecam.write((1 << 15) + 0x3c, &[9]);
    let mut io = PciConfigIo::new(bus);
    io.write(0, &cf8(1, 0x3c));
    io.read(4, &mut d);
    assert_eq!(d[0], 9, "both mechanisms see one configuration space");
}

use crate::bus::lock;

#[test]
fn bars_are_allocated_aligned_and_decoded_only_with_memory_enabled() {
    let w64 = PciWindow {
        base: 0x1_0000_0000,
        size: 0x1_0000_0000,
    };
    let bus = Arc::new(Mutex::new(PciBus::new(W32, Some(w64))));
    let a = RamDevice::new(&[
        (0x1000, PciBarKind::Memory32),
        (0x10_0000, PciBarKind::Memory32),
    ]);
    let b = RamDevice::new(&[(0x4000, PciBarKind::Memory64)]);
    lock(&bus).add_device(a.clone()).unwrap();
    lock(&bus).add_device(b.clone()).unwrap();
    let abars = lock(&a).bars();
    assert_eq!(abars[1].addr, 0xc000_0000, "largest first");
    assert_eq!(abars[0].addr, 0xc010_0000);
    assert_eq!(
        lock(&b).bars()[0].addr,
        0x1_0000_0000,
        "64-bit BARs use the high window"
    );

    let mut win = PciBarWindow::new(bus.clone(), W32.base);
    let mut d = [0u8; 4];
    win.write(0x10_0000, &[1, 2, 3, 4]);
    win.read(0x10_0000, &mut d);
    assert_eq!(d, [0xff; 4], "memory decoding is off after allocation");

    let mut ecam = PciConfigMmio::new(bus.clone());
    ecam.write(1 << 15 | 4, &COMMAND_MEMORY.to_le_bytes());
    win.write(0x10_0000, &[1, 2, 3, 4]);
    win.read(0x10_0000, &mut d);
    assert_eq!(d, [1, 2, 3, 4]);
    assert_eq!(&lock(&a).ram[0][..4], &[1, 2, 3, 4]);
    win.read(0x10_0ffe, &mut d);
    assert_eq!(
        d, [0xff; 4],
        "an access straddling the BAR end is not decoded"
    );

    // The guest moves BAR 0 to 0xd000_0000: the old address goes dead, the new one works.
    ecam.write(1 << 15 | 0x10, &0xd000_0000u32.to_le_bytes());
    win.read(0x10_0000, &mut d);
    assert_eq!(d, [0xff; 4]);
    win.read(0x1000_0000, &mut d);
    assert_eq!(d, [1, 2, 3, 4]);

    let mut hi = PciBarWindow::new(bus.clone(), w64.base);
    ecam.write(2 << 15 | 4, &COMMAND_MEMORY.to_le_bytes());
    hi.write(0x3ffc, &[7, 7, 7, 7]);
    assert_eq!(&lock(&b).ram[0][0x3ffc..], &[7, 7, 7, 7]);
}

#[test]
fn slots_and_windows_run_out_cleanly() {
    let small = PciWindow {
        base: 0xc000_0000,
        size: 0x4000,
    };
    let mut bus = PciBus::new(small, None);
    bus.add_device(RamDevice::new(&[(0x1000, PciBarKind::Memory32)]))
        .unwrap();
    assert_eq!(
        bus.add_device(RamDevice::new(&[(0x4000, PciBarKind::Memory64)])),
        Err(PciError::WindowFull {
            index: 0,
            size: 0x4000
        })
    );
    assert!(bus.device(2).is_none(), "a failed device takes no slot");
    // The next one is naturally aligned after the first.
    let c = RamDevice::new(&[(0x2000, PciBarKind::Memory32)]);
    assert_eq!(bus.add_device(c.clone()).unwrap(), 2);
    assert_eq!(lock(&c).bars()[0].addr, 0xc000_2000);
    for _ in 3..32 {
        bus.add_device(RamDevice::new(&[])).unwrap();
    }
    assert_eq!(
        bus.add_device(RamDevice::new(&[])),
        Err(PciError::NoFreeSlot)
    );
}
