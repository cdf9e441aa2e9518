//! Device tests driven by the command line (`probe.pci`, `probe.cat`, `probe.net`, ...): PCI
//! enumeration of bus 0, virtio-net and virtio-9p bring-up, `probe.cat` through 9p, then the
//! network behaviour of `netapp`. Without those options nothing here runs.

use crate::bootinfo::option;
use crate::clock;
use crate::ninep::Share;
use crate::out::{line_start, put_bdf, put_hex};
use crate::pci::{self, Access, Function, MAX_FUNCS};
use crate::serial::{put_dec, puts};
use crate::text::{self, escape, fnv1a, FNV_INIT};
use crate::virtio::{self, Device};
use crate::vnet::Net;
use crate::{netapp, p9};

const VIRTIO_VENDOR: u16 = 0x1af4;
const VIRTIO_NET: u16 = 0x1041;
const VIRTIO_9P: u16 = 0x1049;
const MAX_SHARES: usize = 4;
/// Default base of the window unassigned memory BARs are placed in (`probe.pcimem=` overrides).
const DEFAULT_PCIMEM: u64 = 0xc000_0000;
const CAT_SHOWN: usize = 200;
const CAT_FID: u32 = 1;
const KEYS: [&[u8]; 5] = [
    b"probe.pci",
    b"probe.net",
    b"probe.cat",
    b"probe.listen",
    b"probe.connect",
];

/// True if the command line asks for any device test.
pub fn wanted(cmdline: &[u8]) -> bool {
    KEYS.iter().any(|k| option(cmdline, k).is_some())
}

/// Parses `0x<hex>` or a decimal number.
pub fn parse_addr(s: &[u8]) -> Option<u64> {
    match s.strip_prefix(b"0x") {
        Some(h) if !h.is_empty() && h.len() <= 16 => h.iter().try_fold(0u64, |a, &c| {
            Some(a << 4 | u64::from((c as char).to_digit(16)?))
        }),
        _ => text::parse_u64(s),
    }
}

/// Runs the device tests the command line asks for.
pub fn run(cmdline: &[u8], rsdp: Option<u64>) {
    let khz = clock::tsc_khz();
    line_start();
    puts(b"tsc_khz=");
    put_dec(khz);
    puts(b" source=");
    puts(clock::tsc_source());
    puts(b"\n");

    let ecam = option(cmdline, b"probe.ecam")
        .and_then(parse_addr)
        .or_else(|| {
            rsdp.and_then(|r| crate::acpi::find_table(r, b"MCFG"))
                .and_then(pci::mcfg_bus0)
        });
    let acc = Access::new(ecam);
    line_start();
    puts(b"pci-access ");
    puts(acc.name());
    puts(b"\n");
    let mut funcs = [None; MAX_FUNCS];
    let n = pci::enumerate(acc, &mut funcs);
    let window = option(cmdline, b"probe.pcimem")
        .and_then(parse_addr)
        .unwrap_or(DEFAULT_PCIMEM);
    assign_bars(acc, &funcs[..n], window, ecam);

    let mut net = None;
    let mut shares: [Option<Share>; MAX_SHARES] = Default::default();
    let mut nshares = 0;
    for f in funcs[..n].iter().flatten() {
        line_start();
        puts(b"pci ");
        put_bdf(f.bdf);
        puts(b" ");
        put_hex(u64::from(f.vendor), 4);
        puts(b":");
        put_hex(u64::from(f.device), 4);
        puts(b"\n");
        if f.vendor != VIRTIO_VENDOR || f.header != 0 {
            continue;
        }
        let r = match f.device {
            VIRTIO_NET if net.is_none() => Device::probe(acc, f.bdf)
                .and_then(Net::new)
                .map(|d| net = Some(d)),
            VIRTIO_9P if nshares < MAX_SHARES => {
                Device::probe(acc, f.bdf).and_then(Share::new).map(|s| {
                    line_start();
                    puts(b"9p tag=");
                    escape(s.tag(), puts);
                    puts(b"\n");
                    shares[nshares] = Some(s);
                    nshares += 1;
                })
            }
            _ => Ok(()),
        };
        if let Err(e) = r {
            virtio_error(f, e);
        }
    }
    for s in shares.iter_mut().flatten() {
        if let Err(e) = s.mount() {
            line_start();
            puts(b"9p-error ");
            escape(s.tag(), puts);
            puts(b" ");
            put_p9_error(e);
            puts(b"\n");
        }
    }

    if let Some(path) = option(cmdline, b"probe.cat") {
        cat(&mut shares, path);
    }
    net_tests(cmdline, net.as_mut(), &mut shares);
}

fn virtio_error(f: &Function, e: virtio::Error) {
    line_start();
    puts(b"virtio-error ");
    put_bdf(f.bdf);
    puts(b" ");
    puts(e.name());
    puts(b"\n");
}

fn put_p9_error(e: p9::Error) {
    match e {
        p9::Error::Errno(n) => put_dec(u64::from(n)),
        p9::Error::Protocol => puts(b"protocol"),
        p9::Error::TooBig => puts(b"too-big"),
        p9::Error::Transport => puts(b"transport"),
    }
}

/// Gives every sized memory BAR that reads 0 an address in the window at `base`.
fn assign_bars(acc: Access, funcs: &[Option<Function>], base: u64, ecam: Option<u64>) {
    let mut used = [(0u64, 0u64); 64];
    let mut nused = 0;
    if let Some(e) = ecam {
        used[0] = (e, 1 << 20);
        nused = 1;
    }
    let mut todo = [None; 64];
    let mut ntodo = 0;
    for f in funcs.iter().flatten().filter(|f| f.header == 0) {
        let mut i = 0;
        while i < 6 {
            let Some(bar) = pci::read_bar(acc, f.bdf, i) else {
                i += 1;
                continue;
            };
            if bar.size != 0 {
                if bar.addr != 0 && nused < used.len() {
                    used[nused] = (bar.addr, bar.size);
                    nused += 1;
                } else if bar.addr == 0 && ntodo < todo.len() {
                    todo[ntodo] = Some((f.bdf, i, bar));
                    ntodo += 1;
                }
            }
            i += if bar.wide { 2 } else { 1 };
        }
    }
    let mut cursor = base;
    for (bdf, i, bar) in todo.iter().flatten().copied() {
        let Some(at) = pci::place(cursor, bar.size, &used[..nused]) else {
            continue;
        };
        if !bar.wide && at.saturating_add(bar.size) > 1 << 32 {
            continue;
        }
        pci::write_bar(acc, bdf, i, bar, at);
        cursor = at + bar.size;
        line_start();
        puts(b"pci-bar ");
        put_bdf(bdf);
        puts(b" bar");
        put_dec(u64::from(i));
        puts(b"=0x");
        put_hex(at, 16);
        puts(b" size=0x");
        put_hex(bar.size, 8);
        puts(b"\n");
    }
}

/// `probe.cat=<tag>/<file>`: length, FNV-1a and the first bytes of a file.
fn cat(shares: &mut [Option<Share>], arg: &[u8]) {
    let Some((tag, file)) = text::split_tag(arg) else {
        return cat_error(b"bad-argument");
    };
    let Some(sh) = shares.iter_mut().flatten().find(|s| s.tag() == tag) else {
        return cat_error(b"no-share");
    };
    if let Err(e) = sh.open(CAT_FID, file) {
        line_start();
        puts(b"cat-error ");
        put_p9_error(e);
        return puts(b"\n");
    }
    let (mut len, mut h) = (0u64, FNV_INIT);
    let mut shown = [0u8; CAT_SHOWN];
    let mut nshown = 0;
    let result = loop {
        match sh.read(CAT_FID, len, u32::MAX) {
            Ok([]) => break Ok(()),
            Ok(data) => {
                h = fnv1a(h, data);
                let k = data.len().min(CAT_SHOWN - nshown);
                shown[nshown..nshown + k].copy_from_slice(&data[..k]);
                nshown += k;
                len += data.len() as u64;
            }
            Err(e) => break Err(e),
        }
    };
    let _ = sh.close(CAT_FID);
    if let Err(e) = result {
        line_start();
        puts(b"cat-error ");
        put_p9_error(e);
        return puts(b"\n");
    }
    line_start();
    puts(b"cat ");
    puts(arg);
    puts(b" len=");
    put_dec(len);
    puts(b" fnv=");
    put_hex(u64::from(h), 8);
    puts(b"\n");
    line_start();
    puts(b"cat-data ");
    escape(&shown[..nshown], puts);
    puts(b"\n");
}

fn cat_error(what: &[u8]) {
    line_start();
    puts(b"cat-error ");
    puts(what);
    puts(b"\n");
}

/// `probe.net=dhcp` with `probe.listen=`, `probe.serve=`, `probe.connect=`.
fn net_tests(cmdline: &[u8], net: Option<&mut Net>, shares: &mut [Option<Share>]) {
    let mode = option(cmdline, b"probe.net");
    let asked = mode.is_some()
        || option(cmdline, b"probe.listen").is_some()
        || option(cmdline, b"probe.connect").is_some();
    if !asked {
        return;
    }
    let Some(net) = net else {
        line_start();
        return puts(b"net-error no-device\n");
    };
    if mode != Some(b"dhcp") {
        line_start();
        return puts(b"net-error need-probe.net=dhcp\n");
    }
    let listen = match option(cmdline, b"probe.listen") {
        None => Some(7002),
        Some(p) => text::parse_u64(p)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0),
    };
    let opts = netapp::Opts {
        listen,
        serve: option(cmdline, b"probe.serve").and_then(text::parse_u64),
        connect: option(cmdline, b"probe.connect").and_then(text::parse_endpoint),
    };
    line_start();
    puts(b"net mac=");
    for (i, b) in net.mac.iter().enumerate() {
        if i > 0 {
            puts(b":");
        }
        put_hex(u64::from(*b), 2);
    }
    puts(b"\n");
    netapp::run(net, shares, &opts);
}
