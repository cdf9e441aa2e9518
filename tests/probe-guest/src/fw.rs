//! The FW protocol: the probe runs as the machine's firmware, from the reset vector of
//! `probe-fw.bin` (see entry.rs and mkfwimage.py). Nobody hands it boot information, so it asks
//! the platform the way OVMF does: QEMU fw_cfg (signature, ID, file directory, command line,
//! `etc/e820`, the kernel/setup/initrd items, and the `etc/table-loader` script that builds the
//! ACPI tables), the ICH9 LPC bridge (PMBASE, ACPI enable), the ACPI PM timer, the ISA debug
//! console, and, on request, CFI flash. Every step prints its marker (README.md).
//!
//! Guest RAM this mode uses besides the probe image, checked against `etc/e820`: the loader
//! blobs (ACPI tables) at 8 MiB (8 MiB long) and a 64 KiB DMA / script buffer at 16 MiB.

use core::sync::atomic::{compiler_fence, Ordering};

use crate::bootinfo::{self, option, BootInfo};
use crate::clock::{self, rdtsc};
use crate::devices::parse_addr;
use crate::fwcfg::{self, Dir, MAX_FILES};
use crate::mmio::{self, Mmio};
use crate::out::{line_start, put_hex};
use crate::serial::{inb, inl, outb, outl, outw, put_dec, puts};
use crate::text::{escape, fnv1a, FNV_INIT};

const PORT_SELECTOR: u16 = 0x510;
const PORT_DATA: u16 = 0x511;
const PORT_DMA_HIGH: u16 = 0x514;
const PORT_DMA_LOW: u16 = 0x518;

const KEY_SIGNATURE: u16 = 0x00;
const KEY_ID: u16 = 0x01;
const KEY_KERNEL_SIZE: u16 = 0x08;
const KEY_INITRD_SIZE: u16 = 0x0b;
const KEY_KERNEL_DATA: u16 = 0x11;
const KEY_INITRD_DATA: u16 = 0x12;
const KEY_CMDLINE_SIZE: u16 = 0x14;
const KEY_CMDLINE_DATA: u16 = 0x15;
const KEY_SETUP_SIZE: u16 = 0x17;
const KEY_SETUP_DATA: u16 = 0x18;
const KEY_FILE_DIR: u16 = 0x19;

const ID_DMA: u32 = 1 << 1;
const DMA_ERROR: u32 = 1 << 0;
const DMA_READ: u32 = 1 << 1;
const DMA_SELECT: u32 = 1 << 3;
/// Polls of a DMA descriptor before giving up (QEMU completes it within the port write).
const DMA_POLLS: u32 = 100_000;

/// Loader blobs (the ACPI tables) go here.
const LOADER_BASE: u64 = 8 << 20;
const LOADER_SIZE: usize = 8 << 20;
/// DMA target of the hashes and buffer of the table-loader script.
const SCRATCH_BASE: u64 = 16 << 20;
const SCRATCH_SIZE: usize = 64 << 10;
/// I/O-port reads go through a stack buffer of this size (one `rep insb` each).
const IO_CHUNK: usize = 4096;
const CMDLINE_MAX: usize = 4096;
const E820_MAX: usize = 128;

/// ICH9 LPC bridge at 00:1f.0 and its power-management registers.
const LPC_ID: u32 = 0x2918_8086;
const LPC_PMBASE: u32 = 0x40;
const LPC_ACPI_CNTL: u32 = 0x44;
const LPC_ACPI_EN: u8 = 1 << 7;
const PMBASE_VALUE: u32 = 0x601;
const PMBASE_MASK: u32 = 0xff80;
/// The PM timer's offset in the PMBASE block.
const PM_TMR: u16 = 8;

/// ISA debug console (QEMU `isa-debugcon`, iobase 0x402): reads back 0xE9.
const DEBUGCON: u16 = 0x402;
const DEBUGCON_READBACK: u8 = 0xe9;

/// What `probe.flash=` programs.
const FLASH_TEXT: &[u8; 16] = b"cvmm-probe-flash";
/// Status polls per programmed byte.
const FLASH_POLLS: u32 = 1000;

/// fw_cfg access; `dma` when the device offers DMA (ID bit 1) and `probe.fwcfg=io` is absent.
#[derive(Clone, Copy)]
struct FwCfg {
    dma: bool,
}

#[repr(C, align(16))]
struct DmaAccess {
    control: u32,
    length: u32,
    address: u64,
}

impl FwCfg {
    fn select(key: u16) {
        outw(PORT_SELECTOR, key);
    }

    /// Reads the next `dst.len()` bytes of the selected item through the data port.
    fn read_io(dst: &mut [u8]) {
        if dst.is_empty() {
            return;
        }
        // SAFETY: `rep insb` stores exactly `dst.len()` bytes at `dst` (DF is clear per the
        // ABI); the asm has no `nomem`, so the compiler sees the buffer as written.
        unsafe {
            core::arch::asm!("rep insb", inout("rdi") dst.as_mut_ptr() => _,
                inout("rcx") dst.len() => _, in("dx") PORT_DATA,
                options(nostack, preserves_flags));
        }
    }

    /// A little-endian u32 item, read through the data port.
    fn read_u32(key: u16) -> u32 {
        let mut b = [0u8; 4];
        Self::select(key);
        Self::read_io(&mut b);
        u32::from_le_bytes(b)
    }

    /// One DMA transfer of `control` (big-endian descriptor) into `dst`; false on the error
    /// bit or a timeout.
    fn dma(control: u32, dst: &mut [u8]) -> bool {
        let Ok(len) = u32::try_from(dst.len()) else {
            return false;
        };
        let mut d = DmaAccess {
            control: 0,
            length: 0,
            address: 0,
        };
        let p: *mut DmaAccess = &mut d;
        // SAFETY: `p` points to the live, aligned descriptor on this stack frame; volatile so
        // the stores happen before the port writes that hand it to the device.
        unsafe {
            core::ptr::addr_of_mut!((*p).control).write_volatile(control.to_be());
            core::ptr::addr_of_mut!((*p).length).write_volatile(len.to_be());
            core::ptr::addr_of_mut!((*p).address).write_volatile((dst.as_mut_ptr() as u64).to_be());
        }
        compiler_fence(Ordering::SeqCst);
        // Identity map: the descriptor's virtual address is its physical address.
        let addr = p as u64;
        // SAFETY: the DMA address register is big-endian: writing the high half, then the low
        // half starts the transfer, which writes `dst` and the descriptor's control word. No
        // `nomem`: the compiler must assume both changed.
        unsafe {
            core::arch::asm!("out dx, eax", in("dx") PORT_DMA_HIGH,
                in("eax") ((addr >> 32) as u32).to_be(), options(nostack, preserves_flags));
            core::arch::asm!("out dx, eax", in("dx") PORT_DMA_LOW,
                in("eax") (addr as u32).to_be(), options(nostack, preserves_flags));
        }
        for _ in 0..DMA_POLLS {
            // SAFETY: as above; the device clears the control word when done.
            let c = u32::from_be(unsafe { core::ptr::addr_of!((*p).control).read_volatile() });
            if c & DMA_ERROR != 0 {
                return false;
            }
            if c == 0 {
                compiler_fence(Ordering::SeqCst);
                return true;
            }
        }
        false
    }

    /// Selects `key` and reads its first `dst.len()` bytes (DMA when available).
    fn read(self, key: u16, dst: &mut [u8]) -> bool {
        if self.dma {
            return Self::dma((u32::from(key) << 16) | DMA_SELECT | DMA_READ, dst);
        }
        Self::select(key);
        Self::read_io(dst);
        true
    }

    /// Reads the next `dst.len()` bytes of the selected item.
    fn read_more(self, dst: &mut [u8]) -> bool {
        if self.dma {
            return Self::dma(DMA_READ, dst);
        }
        Self::read_io(dst);
        true
    }
}

/// Guest RAM at `addr` reserved for this mode (see the module doc), as a mutable slice.
#[cfg(not(test))]
fn ram(addr: u64, len: usize) -> Option<&'static mut [u8]> {
    let ok = (addr == LOADER_BASE && len <= LOADER_SIZE)
        || (addr == SCRATCH_BASE && len <= SCRATCH_SIZE);
    // SAFETY: the two regions lie in RAM (the caller checked `etc/e820`), inside the identity
    // map and outside the probe image, its stack and arena; each region is handed out to one
    // user at a time (the scratch buffer is reused only after the previous user is done).
    ok.then(|| unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) })
}

#[cfg(test)]
fn ram(_addr: u64, _len: usize) -> Option<&'static mut [u8]> {
    None
}

/// The buffer the command line is kept in for the rest of the run.
#[cfg(not(test))]
fn cmdline_buf() -> &'static mut [u8; CMDLINE_MAX] {
    #[link_section = ".noinit"]
    static mut CMDLINE: [u8; CMDLINE_MAX] = [0; CMDLINE_MAX];
    // SAFETY: called once (from `boot`), single-threaded; not zeroed at entry, so only the
    // bytes read from fw_cfg are used.
    unsafe { &mut *core::ptr::addr_of_mut!(CMDLINE) }
}

#[cfg(test)]
fn cmdline_buf() -> &'static mut [u8; CMDLINE_MAX] {
    Box::leak(Box::new([0; CMDLINE_MAX]))
}

fn marker(parts: &[&[u8]]) {
    line_start();
    for p in parts {
        puts(p);
    }
    puts(b"\n");
}

/// `0x` and the hex digits of `v` without leading zeros.
fn put_hex_short(v: u64) {
    let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
    puts(b"0x");
    put_hex(v, digits);
}

/// What the FW boot found out, for the later steps.
pub struct Session {
    cfg: Option<FwCfg>,
    dir: Dir,
    ram_ok: bool,
}

/// First FW step (after `start proto=fw`): fw_cfg signature, ID, command line, directory and
/// `etc/e820`. Prints the `fwcfg` markers up to the file list.
pub fn boot() -> (BootInfo, Session) {
    let mut bi = BootInfo {
        proto: b"fw",
        cmdline: &[],
        ram_bytes: 0,
        rsdp: 0,
    };
    let mut s = Session {
        cfg: None,
        dir: Dir::empty(),
        ram_ok: false,
    };
    let mut sig = [0u8; 4];
    FwCfg::select(KEY_SIGNATURE);
    FwCfg::read_io(&mut sig);
    if &sig != b"QEMU" {
        marker(&[b"fwcfg absent"]);
        return (bi, s);
    }
    let id = FwCfg::read_u32(KEY_ID);
    line_start();
    puts(b"fwcfg sig=QEMU id=");
    put_dec(u64::from(id));
    puts(b"\n");

    // The command line first (through the port): it may ask for `probe.fwcfg=io`.
    let size = (FwCfg::read_u32(KEY_CMDLINE_SIZE) as usize).min(CMDLINE_MAX);
    let buf = cmdline_buf();
    FwCfg::select(KEY_CMDLINE_DATA);
    FwCfg::read_io(&mut buf[..size]);
    let len = buf[..size].iter().position(|&c| c == 0).unwrap_or(size);
    bi.cmdline = &buf[..len];
    let cfg = FwCfg {
        dma: id & ID_DMA != 0 && option(bi.cmdline, b"probe.fwcfg") != Some(b"io"),
    };
    s.cfg = Some(cfg);

    let mut raw = [0u8; fwcfg::dir_len(MAX_FILES as u32)];
    let ok = cfg.read(KEY_FILE_DIR, &mut raw[..4]) && {
        let n = fwcfg::dir_len(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]));
        cfg.read_more(&mut raw[4..n])
    };
    if ok {
        s.dir = fwcfg::parse_dir(&raw);
    }
    line_start();
    puts(b"fwcfg files=");
    put_dec(u64::from(s.dir.count));
    puts(if cfg.dma { b" via=dma" } else { b" via=io" });
    puts(if ok { b"\n" } else { b" error\n" });
    for f in s.dir.files() {
        line_start();
        puts(b"fwcfg file ");
        escape(f.name(), puts);
        puts(b" size=");
        put_dec(u64::from(f.size));
        puts(b"\n");
    }

    if let Some(f) = s.dir.find(b"etc/e820") {
        let mut table = [0u8; E820_MAX * 20];
        let n = (f.size as usize).min(table.len());
        if cfg.read(f.key, &mut table[..n]) {
            bi.ram_bytes = bootinfo::ram_total(&table[..n], 20);
            s.ram_ok =
                fwcfg::ram_covers(&table[..n], LOADER_BASE, SCRATCH_BASE + SCRATCH_SIZE as u64);
        }
    }
    (bi, s)
}

impl Session {
    /// Second FW step (after `cmdline=` and `mem_mib=`): kernel/setup/initrd hashes, ICH9
    /// LPC, PM timer, debug console, table loader. Returns the RSDP address (0 if none).
    pub fn platform(&self) -> u64 {
        if let Some(cfg) = self.cfg {
            if !self.ram_ok {
                marker(&[b"fwcfg-error no-ram"]);
            }
            self.hash_item(cfg, b"kernel", KEY_KERNEL_SIZE, KEY_KERNEL_DATA);
            self.hash_item(cfg, b"setup", KEY_SETUP_SIZE, KEY_SETUP_DATA);
            self.hash_item(cfg, b"initrd", KEY_INITRD_SIZE, KEY_INITRD_DATA);
        }
        let pmbase = lpc();
        pm_timer(pmbase);
        debugcon();
        match self.cfg {
            Some(cfg) if self.ram_ok => self.loader(cfg),
            _ => 0,
        }
    }

    /// `fwcfg <what> size=<n> fnv-io=<h> fnv-dma=<h>`: the item hashed through the port and
    /// again through DMA (if available).
    fn hash_item(&self, cfg: FwCfg, what: &[u8], size_key: u16, data_key: u16) {
        let size = FwCfg::read_u32(size_key) as usize;
        line_start();
        puts(b"fwcfg ");
        puts(what);
        puts(b" size=");
        put_dec(size as u64);
        if size != 0 {
            let mut buf = [0u8; IO_CHUNK];
            let mut h = FNV_INIT;
            FwCfg::select(data_key);
            let mut left = size;
            while left > 0 {
                let k = left.min(IO_CHUNK);
                FwCfg::read_io(&mut buf[..k]);
                h = fnv1a(h, &buf[..k]);
                left -= k;
            }
            puts(b" fnv-io=");
            put_hex(u64::from(h), 8);
            if let Some(scratch) =
                ram(SCRATCH_BASE, SCRATCH_SIZE).filter(|_| cfg.dma && self.ram_ok)
            {
                let mut h = FNV_INIT;
                let mut left = size;
                let mut control = (u32::from(data_key) << 16) | DMA_SELECT | DMA_READ;
                let ok = loop {
                    if left == 0 {
                        break true;
                    }
                    let k = left.min(SCRATCH_SIZE);
                    if !FwCfg::dma(control, &mut scratch[..k]) {
                        break false;
                    }
                    h = fnv1a(h, &scratch[..k]);
                    left -= k;
                    control = DMA_READ;
                };
                puts(b" fnv-dma=");
                if ok {
                    put_hex(u64::from(h), 8);
                } else {
                    puts(b"error");
                }
            }
        }
        puts(b"\n");
    }

    /// Runs `etc/table-loader`; the RSDP is the blob of `etc/acpi/rsdp`.
    fn loader(&self, cfg: FwCfg) -> u64 {
        let Some(f) = self.dir.find(b"etc/table-loader") else {
            marker(&[b"fwcfg loader absent"]);
            return 0;
        };
        let (Some(script), Some(mem)) = (
            ram(SCRATCH_BASE, f.size as usize),
            ram(LOADER_BASE, LOADER_SIZE),
        ) else {
            marker(&[b"fwcfg-error loader too-big"]);
            return 0;
        };
        if !cfg.read(f.key, script) {
            marker(&[b"fwcfg-error loader read-failed"]);
            return 0;
        }
        match fwcfg::run_loader(script, &self.dir, mem, LOADER_BASE, |key, dst| {
            cfg.read(key, dst)
        }) {
            Ok(l) => {
                line_start();
                puts(b"fwcfg loader commands=");
                put_dec(u64::from(l.commands));
                puts(b" skipped=");
                put_dec(u64::from(l.skipped));
                puts(b"\n");
                l.addr(b"etc/acpi/rsdp").unwrap_or(0)
            }
            Err(e) => {
                marker(&[b"fwcfg-error loader ", e.name()]);
                0
            }
        }
    }
}

fn lpc_addr(off: u32) -> u32 {
    0x8000_0000 | (31 << 11) | off // bus 0, device 31, function 0
}

/// ICH9 LPC, as OVMF sets it up: PMBASE = 0x600 and ACPI decoding on. Returns PMBASE.
fn lpc() -> Option<u16> {
    outl(0xcf8, lpc_addr(0));
    if inl(0xcfc) != LPC_ID {
        marker(&[b"lpc absent"]);
        return None;
    }
    outl(0xcf8, lpc_addr(LPC_PMBASE));
    outl(0xcfc, PMBASE_VALUE);
    outl(0xcf8, lpc_addr(LPC_ACPI_CNTL & !3));
    let port = 0xcfc + (LPC_ACPI_CNTL & 3) as u16;
    let cntl = inb(port);
    outb(port, cntl | LPC_ACPI_EN);
    outl(0xcf8, lpc_addr(LPC_PMBASE));
    let pmbase = (inl(0xcfc) & PMBASE_MASK) as u16;
    line_start();
    puts(b"lpc pmbase=");
    put_hex_short(u64::from(pmbase));
    puts(b"\n");
    Some(pmbase)
}

/// Rate of the 24-bit ACPI PM timer (3.579545 MHz nominal) over ~10 ms of TSC.
fn pm_timer(pmbase: Option<u16>) {
    let Some(base) = pmbase.filter(|&b| b != 0) else {
        marker(&[b"pmtimer absent"]);
        return;
    };
    let port = base + PM_TMR;
    let tsc_khz = clock::tsc_khz();
    let p0 = inl(port);
    let t0 = rdtsc();
    while rdtsc().wrapping_sub(t0) < tsc_khz * 10 {}
    let p1 = inl(port);
    let t1 = rdtsc();
    let ticks = u64::from(p1.wrapping_sub(p0) & 0xff_ffff);
    let khz = ticks * tsc_khz / t1.wrapping_sub(t0).max(1);
    line_start();
    puts(b"pmtimer khz=");
    put_dec(khz);
    puts(b"\n");
}

fn debugcon() {
    if inb(DEBUGCON) != DEBUGCON_READBACK {
        marker(&[b"debugcon absent"]);
        return;
    }
    for &c in b"cvmm-probe: debugcon\n" {
        outb(DEBUGCON, c);
    }
    marker(&[b"debugcon present"]);
}

/// `probe.flash=` and `probe.flashro=` (after `cpus=`).
pub fn flash_tests(cmdline: &[u8]) {
    if let Some(a) = option(cmdline, b"probe.flash") {
        match flash_map(a) {
            Some(m) => flash_program(m),
            None => marker(&[b"flash-error bad-address"]),
        }
    }
    if let Some(a) = option(cmdline, b"probe.flashro") {
        match flash_map(a) {
            Some(m) => flash_readonly(m),
            None => marker(&[b"flash-error bad-address"]),
        }
    }
}

/// The 4 KiB at the address in `arg`, mapped uncached.
fn flash_map(arg: &[u8]) -> Option<Mmio> {
    let base = parse_addr(arg)?;
    let m = Mmio::map(base, 0x1000)?;
    mmio::uncache_low(base, 0x1000);
    Some(m)
}

/// Reads the status register at `off` until ready (bit 7), bounded.
fn flash_wait(m: Mmio, off: u64) -> u8 {
    let mut s = 0;
    for _ in 0..FLASH_POLLS {
        s = m.r8(off);
        if s & 0x80 != 0 {
            break;
        }
    }
    s
}

/// CFI query, then programs `FLASH_TEXT` byte by byte at offset 0 and reads it back.
fn flash_program(m: Mmio) {
    m.w8(0, 0x98); // CFI query
    let qry = [m.r8(0x10), m.r8(0x11), m.r8(0x12)];
    m.w8(0, 0xff); // read array
    m.w8(0, 0x50); // clear status
    let mut status = 0u8;
    let mut programmed = 0;
    for (i, &b) in FLASH_TEXT.iter().enumerate() {
        let off = i as u64;
        m.w8(off, 0x10); // single byte program
        m.w8(off, b);
        let s = flash_wait(m, off);
        status |= s;
        if s & 0x80 != 0 && s & 0x30 == 0 {
            programmed += 1;
        }
    }
    m.w8(0, 0xff);
    let same = FLASH_TEXT
        .iter()
        .enumerate()
        .all(|(i, &b)| m.r8(i as u64) == b);
    line_start();
    puts(if &qry == b"QRY" {
        b"flash cfi=QRY"
    } else {
        b"flash cfi=none"
    });
    puts(b" programmed=");
    put_dec(programmed);
    puts(b" status=0x");
    put_hex(u64::from(status), 2);
    puts(if same {
        b" readback=ok\n"
    } else {
        b" readback=bad\n"
    });
}

/// Tries to program the inverse of the byte at offset 0 of a read-only flash.
fn flash_readonly(m: Mmio) {
    m.w8(0, 0xff);
    let before = m.r8(0);
    m.w8(0, 0x50);
    m.w8(0, 0x10);
    m.w8(0, !before);
    let status = flash_wait(m, 0);
    m.w8(0, 0xff);
    let after = m.r8(0);
    line_start();
    puts(b"flash-ro status=0x");
    put_hex(u64::from(status), 2);
    puts(if after == before {
        b" unchanged=yes\n"
    } else {
        b" unchanged=no\n"
    });
}
