//! Kernel loading: `vmm::boot::load` on the input written to a temporary file as the kernel
//! (bzImage or ELF/PVH, sniffed by the loader) into 64 MiB of guest memory. It must return
//! Ok or Err, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use vmm::boot::{load, BootInputs};
use vmm::memory::{create, GuestMem};

const MIB: u64 = 64;

fn memory() -> &'static GuestMem {
    static MEM: OnceLock<GuestMem> = OnceLock::new();
    MEM.get_or_init(|| create(MIB).expect("64 MiB of guest memory"))
}

fn kernel_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("cvmm-fuzz-kernel-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = kernel_path();
    std::fs::write(path, data).expect("temp file is writable");
    let inputs = BootInputs {
        kernel: path,
        initrd: None,
        cmdline: "console=ttyS0 reboot=k panic=1",
        memory_mib: MIB,
        rsdp: 0xe_0000,
    };
    let _ = load(memory(), &inputs);
});
