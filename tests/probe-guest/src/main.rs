//! cvmm probe guest: a tiny x86-64 kernel that boots through PVH or the Linux boot protocol, or
//! runs as the machine's firmware from the reset vector (FW protocol, `probe-fw.bin`), and
//! reports what the VMM gave it on COM1 (`cvmm-probe: ...` lines) and port 0x80 (progress
//! codes), then exits the way `probe.exit=` asks. Built without SSE (see build.sh) so that it
//! runs on PVM hosts. The contract is in README.md.

#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

mod acpi;
mod arena;
mod bootinfo;
mod clock;
mod devices;
#[cfg(not(test))]
mod entry;
mod exit;
mod fw;
mod fwcfg;
mod ioapic;
mod mmio;
mod netapp;
mod ninep;
mod out;
mod p9;
mod pci;
mod phys;
#[cfg(not(test))]
mod rt;
mod serial;
mod text;
mod virtio;
mod virtq;
mod vnet;

/// Progress code: an entry point was reached (written by the entry assembly).
pub const POST_ENTRY: u8 = 0x40;
/// Progress code: boot information and CPUs collected.
pub const POST_PROBED: u8 = 0x41;
/// Progress code: ready (the probe is about to exit).
pub const POST_READY: u8 = 0x60;

/// Rust entry, called by `entry.rs` on the probe stack with paging on.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn rust_main(proto: u32, info: u64) -> ! {
    use exit::ExitKind;
    use serial::{post, put_dec, puts};

    serial::init();
    let (bi, session) = if proto == bootinfo::PROTO_FW {
        line(&[b"start proto=fw"]);
        let (bi, s) = fw::boot();
        (bi, Some(s))
    } else {
        let bi = bootinfo::read(proto, info);
        line(&[b"start proto=", bi.proto]);
        (bi, None)
    };
    line(&[b"cmdline=", bi.cmdline]);

    puts(b"cvmm-probe: mem_mib=");
    put_dec(bi.ram_bytes >> 20);
    puts(b"\n");

    let rsdp = match &session {
        Some(s) => s.platform(),
        None => bi.rsdp,
    };
    let fw = acpi::locate(rsdp);
    let (cpus, source) = acpi::count_cpus(&fw);
    puts(b"cvmm-probe: cpus=");
    put_dec(u64::from(cpus));
    puts(b" source=");
    puts(source.name());
    puts(b"\n");
    post(POST_PROBED);
    if session.is_some() {
        fw::flash_tests(bi.cmdline);
    }

    post(POST_READY);
    line(&[b"ready"]);

    if ioapic::wanted(bi.cmdline) {
        ioapic::run(fw.rsdp);
    }
    if devices::wanted(bi.cmdline) {
        devices::run(bi.cmdline, fw.rsdp);
    }

    let kind = bootinfo::option(bi.cmdline, b"probe.exit")
        .and_then(ExitKind::parse)
        .unwrap_or(ExitKind::Poweroff);
    line(&[b"exit=", kind.name()]);
    exit::exit(kind, fw.rsdp)
}

/// Prints one marker line: `cvmm-probe: ` + parts + newline.
#[cfg(not(test))]
fn line(parts: &[&[u8]]) {
    serial::puts(b"cvmm-probe: ");
    for p in parts {
        serial::puts(p);
    }
    serial::puts(b"\n");
}
