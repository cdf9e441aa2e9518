//! The chipset registers driven the way OVMF's platform code drives them.

use super::*;
use crate::bus::{PioBus, PioDevice};
use crate::legacy::{GuestStop, StopSignal};
use crate::pci::{PciBus, PciConfigIo, PciDevice, PciWindow, HOST_BRIDGE_DEVICE_ID};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn cfg_read32(d: &mut dyn PciDevice, off: u16) -> u32 {
    let mut b = [0u8; 4];
    d.read_config(off, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn mch_identifies_as_q35_and_keeps_pciexbar_and_pam() {
    let mut m = Q35Mch::new();
    assert_eq!(
        cfg_read32(&mut m, 0),
        0x8086 | u32::from(HOST_BRIDGE_DEVICE_ID) << 16
    );
    assert_eq!(m.ecam_enabled_at(), None);
    // OVMF: PCIEXBAR high dword first, then base | 256 MiB length | enable.
    m.write_config(0x64, &0u32.to_le_bytes());
    m.write_config(0x60, &((Q35_ECAM_BASE as u32) | 1).to_le_bytes());
    assert_eq!(m.ecam_enabled_at(), Some(Q35_ECAM_BASE));
    // Reserved bits do not stick.
    m.write_config(0x60, &0xffff_ffffu32.to_le_bytes());
    assert_eq!(cfg_read32(&mut m, 0x60), 0xfc00_0007);
    // PAM0 has one writable nibble pair, PAM1..6 two.
    m.write_config(0x90, &[0xff]);
    m.write_config(0x91, &[0xff]);
    let mut b = [0u8; 1];
    m.read_config(0x90, &mut b);
    assert_eq!(b[0], 0x30);
    m.read_config(0x91, &mut b);
    assert_eq!(b[0], 0x33);
    // No extended TSEG, and the identity registers are read-only.
    let mut w = [0u8; 2];
    m.read_config(0x50, &mut w);
    assert_eq!(w, [0, 0]);
    m.write_config(0x00, &[0xff, 0xff]);
    assert_eq!(cfg_read32(&mut m, 0) & 0xffff, 0x8086);
}

#[test]
fn lpc_enables_the_pm_block_only_with_acpi_en() {
    let decode = Arc::new(PmDecode::default());
    let mut lpc = Ich9Lpc::new(decode.clone());
    assert_eq!(
        cfg_read32(&mut lpc, 0),
        0x8086 | u32::from(LPC_DEVICE_ID) << 16
    );
    assert_eq!(cfg_read32(&mut lpc, 0x40), 1, "PMBASE: I/O space bit only");
    lpc.write_config(0x40, &0x601u32.to_le_bytes());
    assert_eq!(cfg_read32(&mut lpc, 0x40), 0x601);
    assert_eq!(decode.get(), None, "ACPI_EN still clear");
    lpc.write_config(0x44, &[0x80]);
    assert_eq!(decode.get(), Some(Q35_PM_BASE));
    assert_eq!(lpc.pm_base(), Some(Q35_PM_BASE));
    lpc.write_config(0x44, &[0]);
    assert_eq!(decode.get(), None);
    // PIRQ routing registers start disabled and keep what firmware writes.
    let mut b = [0u8; 1];
    lpc.read_config(0x60, &mut b);
    assert_eq!(b[0], 0x80);
    lpc.write_config(0x60, &[0x0b]);
    lpc.read_config(0x60, &mut b);
    assert_eq!(b[0], 0x0b);
}

fn pm_with_clock() -> (AcpiPm, Arc<PmDecode>, StopSignal, Arc<Mutex<Duration>>) {
    let decode = Arc::new(PmDecode::default());
    let stop = StopSignal::new().unwrap();
    let now = Arc::new(Mutex::new(Duration::ZERO));
    let n2 = now.clone();
    let pm = AcpiPm::with_clock(
        decode.clone(),
        stop.clone(),
        Box::new(move || *n2.lock().unwrap()),
    );
    (pm, decode, stop, now)
}

fn read32(d: &mut dyn PioDevice, off: u16) -> u32 {
    let mut b = [0u8; 4];
    d.read(off, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn pm_block_is_silent_until_enabled_at_its_base() {
    let (mut pm, decode, stop, _) = pm_with_clock();
    assert_eq!(read32(&mut pm, 0x08), 0xffff_ffff);
    pm.write(0x04, &((Q35_S5_SLP_TYP << 10) | (1 << 13)).to_le_bytes());
    assert_eq!(stop.reason(), None, "a disabled block ignores writes");
    decode.set(Some(0x700));
    assert_eq!(
        read32(&mut pm, 0x08),
        0xffff_ffff,
        "moved base: not decoded"
    );
    decode.set(Some(Q35_PM_BASE));
    assert_eq!(read32(&mut pm, 0x04) & 1, 1, "SCI_EN reads set");
}

#[test]
fn pm_timer_counts_at_3_579545_mhz_and_wraps_at_24_bits() {
    let (mut pm, decode, _, now) = pm_with_clock();
    decode.set(Some(Q35_PM_BASE));
    assert_eq!(read32(&mut pm, 0x08), 0);
    *now.lock().unwrap() = Duration::from_millis(10);
    assert_eq!(read32(&mut pm, 0x08), 35_795);
    *now.lock().unwrap() = Duration::from_secs(5); // 17.9 M ticks: past 2^24
    let t = read32(&mut pm, 0x08);
    assert_eq!(t, (5 * PM_TIMER_HZ as u32) & 0xff_ffff);
    // Byte reads see the same register.
    let mut b = [0u8; 2];
    pm.read(0x09, &mut b);
    assert_eq!(u16::from_le_bytes(b), (t >> 8) as u16);
}

#[test]
fn pm1_cnt_s5_powers_off_and_other_states_are_refused() {
    let (mut pm, decode, stop, _) = pm_with_clock();
    decode.set(Some(Q35_PM_BASE));
    pm.write(0x04, &((1u16 << 10) | (1 << 13)).to_le_bytes()); // S1/S3: not offered
    assert_eq!(stop.reason(), None);
    pm.write(0x04, &(Q35_S5_SLP_TYP << 10).to_le_bytes()); // type without SLP_EN
    assert_eq!(stop.reason(), None);
    assert_eq!(read32(&mut pm, 0x04) & (1 << 13), 0, "SLP_EN reads 0");
    pm.write(0x04, &((Q35_S5_SLP_TYP << 10) | (1 << 13)).to_le_bytes());
    assert_eq!(stop.reason(), Some(GuestStop::PowerOff));
}

#[test]
fn pm_status_registers_clear_on_write_one_and_bad_sizes_are_ignored() {
    let (mut pm, decode, _, _) = pm_with_clock();
    decode.set(Some(Q35_PM_BASE));
    pm.write(0x28, &[0xff, 0x0f]);
    let mut b = [0u8; 2];
    pm.read(0x28, &mut b);
    assert_eq!(b, [0xff, 0x0f]);
    pm.write(0x02, &0x0120u16.to_le_bytes());
    assert_eq!(read32(&mut pm, 0x00) >> 16, 0x0120);
    pm.write(0x00, &[1, 2, 3, 4, 5, 6, 7, 8]); // longer than a register: dropped
    pm.write(0x7f, &[1]);
    pm.write(0x20, &[]);
    assert_eq!(read32(&mut pm, 0x00) >> 16, 0x0120);
    let mut big = [0u8; 16];
    pm.read(0x78, &mut big); // past the block's end reads zeros, no panic
}

/// A PM block at its base whose SCI line records every level change.
fn pm_with_sci() -> (AcpiPm, Arc<Mutex<Vec<bool>>>) {
    let (pm, decode, _, _) = pm_with_clock();
    decode.set(Some(Q35_PM_BASE));
    let levels = Arc::new(Mutex::new(Vec::new()));
    let l2 = levels.clone();
    let pm = pm.with_sci(Box::new(move |level| l2.lock().unwrap().push(level)));
    (pm, levels)
}

#[test]
fn power_button_raises_the_sci_once_enabled_and_clears_on_write_one() {
    let (mut pm, levels) = pm_with_sci();
    assert_eq!(PWRBTN_STS, 1 << 8);
    // Enabled first (Linux's button driver sets PWRBTN_EN at boot), then pressed.
    pm.write(0x02, &PWRBTN_EN.to_le_bytes());
    assert_eq!(read32(&mut pm, 0x00), u32::from(PWRBTN_EN) << 16);
    assert!(levels.lock().unwrap().is_empty(), "no event, no SCI");
    pm.press_power_button();
    assert_eq!(read32(&mut pm, 0x00) & 0xffff, u32::from(PWRBTN_STS));
    assert_eq!(*levels.lock().unwrap(), [true]);
    assert!(pm.sci_asserted());
    // Writing 0 or another bit does not clear it; writing 1 to bit 8 does, releasing the SCI.
    pm.write(0x00, &0x0001u16.to_le_bytes());
    assert!(pm.sci_asserted());
    pm.write(0x00, &PWRBTN_STS.to_le_bytes());
    assert_eq!(read32(&mut pm, 0x00) & 0xffff, 0);
    assert_eq!(*levels.lock().unwrap(), [true, false]);
    // A byte-wide write to the status's high byte clears it too (ACPICA may use any width).
    pm.press_power_button();
    pm.write(0x01, &[0x01]);
    assert!(!pm.sci_asserted());
    assert_eq!(*levels.lock().unwrap(), [true, false, true, false]);
}

#[test]
fn a_press_before_the_guest_listens_is_latched_and_raises_the_sci_on_enable() {
    let (mut pm, levels) = pm_with_sci();
    pm.press_power_button();
    assert_eq!(read32(&mut pm, 0x00) & 0xffff, u32::from(PWRBTN_STS));
    assert!(levels.lock().unwrap().is_empty(), "PWRBTN_EN clear: no SCI");
    // A 32-bit write of the pair: clears nothing (status bits 0), sets the enable.
    pm.write(0x00, &(u32::from(PWRBTN_EN) << 16).to_le_bytes());
    assert_eq!(*levels.lock().unwrap(), [true]);
    // Disabling the event releases the line while the status stays latched.
    pm.write(0x02, &0u16.to_le_bytes());
    assert_eq!(*levels.lock().unwrap(), [true, false]);
    assert_eq!(read32(&mut pm, 0x00) & 0xffff, u32::from(PWRBTN_STS));
    // Enabled again and then acknowledged: the line follows.
    pm.write(0x02, &PWRBTN_EN.to_le_bytes());
    pm.write(0x00, &PWRBTN_STS.to_le_bytes());
    assert_eq!(*levels.lock().unwrap(), [true, false, true, false]);
    // The guest cannot raise an event itself: writing 1s to the status only clears.
    pm.write(0x00, &0xffffu16.to_le_bytes());
    assert_eq!(read32(&mut pm, 0x00) & 0xffff, 0);
    assert!(!pm.sci_asserted());
}

#[test]
fn port_cf9_resets_and_cf8_still_addresses_config_space() {
    let stop = StopSignal::new().unwrap();
    let bus = Arc::new(Mutex::new(PciBus::with_host_bridge(
        PciWindow {
            base: 0xc000_0000,
            size: 0x1000_0000,
        },
        None,
        Arc::new(Mutex::new(Q35Mch::new())),
    )));
    let mut pio = PioBus::default();
    pio.insert(
        0xcf8,
        8,
        Arc::new(Mutex::new(PciConfigIo::new(bus).with_reset(stop.clone()))),
    )
    .unwrap();
    pio.pio_write(0xcf8, &0x8000_0000u32.to_le_bytes());
    let mut id = [0u8; 4];
    pio.pio_read(0xcfc, &mut id);
    assert_eq!(u32::from_le_bytes(id) & 0xffff, 0x8086);
    pio.pio_write(0xcf9, &[0x02]); // SYS_RST alone arms, does not reset
    assert_eq!(stop.reason(), None);
    let mut b = [0u8; 1];
    pio.pio_read(0xcf9, &mut b);
    assert_eq!(b[0], 0x02);
    pio.pio_write(0xcf9, &[0x06]);
    assert_eq!(stop.reason(), Some(GuestStop::Reset));
}

#[test]
fn lpc_sits_in_slot_31_next_to_the_q35_host_bridge() {
    let decode = Arc::new(PmDecode::default());
    let mut bus = PciBus::with_host_bridge(
        PciWindow {
            base: 0xc000_0000,
            size: 0x1000_0000,
        },
        None,
        Arc::new(Mutex::new(Q35Mch::new())),
    );
    bus.add_device_at(LPC_SLOT, Arc::new(Mutex::new(Ich9Lpc::new(decode))))
        .unwrap();
    assert!(bus
        .add_device_at(LPC_SLOT, Arc::new(Mutex::new(Q35Mch::new())))
        .is_err());
    assert!(bus
        .add_device_at(0, Arc::new(Mutex::new(Q35Mch::new())))
        .is_err());
    let mut id = [0u8; 4];
    bus.config_read(0, LPC_SLOT, 0, 0, &mut id);
    assert_eq!(
        u32::from_le_bytes(id),
        0x8086 | u32::from(LPC_DEVICE_ID) << 16
    );
}

#[test]
fn debug_console_answers_e9_and_splits_lines() {
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let l2 = lines.clone();
    let mut con = DebugConsole::new(Box::new(move |l| {
        l2.lock()
            .unwrap()
            .push(String::from_utf8_lossy(l).into_owned())
    }));
    let mut b = [0u8; 1];
    con.read(0, &mut b);
    assert_eq!(b[0], DEBUGCON_MAGIC);
    con.write(0, b"SecCoreStartupWithStack(0xFFFCC000)\r\n");
    con.write(0, b"P");
    con.write(0, b"latform\nrest");
    assert_eq!(
        *lines.lock().unwrap(),
        vec!["SecCoreStartupWithStack(0xFFFCC000)", "Platform"]
    );
    con.write(0, &[b'x'; 1300]); // no newline: cut into bounded pieces
    assert!(lines.lock().unwrap().iter().all(|l| l.len() <= 512));
    con.flush();
    let all = lines.lock().unwrap();
    assert_eq!(
        all.iter().map(String::len).sum::<usize>(),
        35 + 8 + 4 + 1300
    );
    assert_eq!(con.bytes(), 37 + 1 + 12 + 1300);
}
