//! Wraps a PVH ELF kernel (Debian's stock `vmlinux`, the probe guest) and an optional initrd in
//! a native-platform IGVM file for `cvmm run --igvm`. The command line, the memory map and the
//! vCPU count stay IGVM parameters, filled by cvmm at boot (`--append`, `--memory`, `--smp`).
//! The layout is described in `tests/common/igvm_wrap.rs`, which `tests/igvm_probe.rs` shares.
//!
//!     cargo run --release --example mkigvm -- --elf vmlinux [--initrd FILE] --out FILE.igvm

#[path = "../tests/common/igvm_wrap.rs"]
mod igvm_wrap;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: mkigvm --elf VMLINUX [--initrd FILE] --out FILE.igvm";

struct Args {
    elf: PathBuf,
    initrd: Option<PathBuf>,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let (mut elf, mut initrd, mut out) = (None, None, None);
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let slot = match a.to_str() {
            Some("--elf") => &mut elf,
            Some("--initrd") => &mut initrd,
            Some("--out") => &mut out,
            Some("-h" | "--help") => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
        };
        let v = it
            .next()
            .ok_or_else(|| format!("{} wants a path\n{USAGE}", a.to_string_lossy()))?;
        *slot = Some(PathBuf::from(v));
    }
    Ok(Args {
        elf: elf.ok_or_else(|| format!("--elf is required\n{USAGE}"))?,
        initrd,
        out: out.ok_or_else(|| format!("--out is required\n{USAGE}"))?,
    })
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let elf = read(&args.elf)?;
    let initrd = args.initrd.as_ref().map(read).transpose()?;
    let w = igvm_wrap::wrap_pvh_elf(&elf, initrd.as_deref(), vec![])
        .map_err(|e| format!("{}: {e}", args.elf.display()))?;
    std::fs::write(&args.out, &w.igvm)
        .map_err(|e| format!("writing {}: {e}", args.out.display()))?;
    let l = &w.layout;
    let initrd = l.initrd.map_or("none".to_string(), |(at, len)| {
        format!("{len} bytes at {at:#x}")
    });
    println!(
        "mkigvm: {} bytes to {}: image {:#x}..{:#x}, PVH entry {:#x} (through the shim at \
         {:#x}), initrd {initrd}, {} pages ({} zero), needs RAM {:#x}..{:#x}",
        w.igvm.len(),
        args.out.display(),
        l.image.0,
        l.image.1,
        l.entry,
        igvm_wrap::SHIM,
        l.pages,
        l.zero_pages,
        l.required.0,
        l.required.0 + l.required.1,
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mkigvm: {e}");
            ExitCode::from(2)
        }
    }
}
