//! Firmware parsers. The input as an IGVM file (its v1 fixed header's total size and CRC32
//! fixed up first, see `cvmm_fuzz::igvm::fix_header`) goes through all three IGVM paths: the
//! SEV-SNP plan (`tee::igvm::plan_from_igvm`, then its update list, digest and CPUID pages
//! filled as templates from a fixed vCPU CPUID), the TDX plan
//! (`tee::tdx_plan::TdxPlan::from_igvm`, then its MRTD) and the plain-KVM loader
//! (`vmm::igvm_boot::load_native` into 16 MiB of guest memory, the least cvmm allows; no KVM
//! needed). The input right-aligned in a 4 KiB-multiple image (the OVMF footer table is found
//! from the end) goes through `tee::ovmf::Ovmf::parse` with the accessors that read its SEV
//! metadata, and through the TDVF parser (`tee::tdvf::Tdvf::parse`) and the TDX plan built
//! from it (which copies every section's data).
//! IGVM inputs that hit panics already known in the igvm crate are skipped (see
//! `cvmm_fuzz::igvm::known_igvm_crate_panic`); the firmware half still sees them.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tee::ovmf::Ovmf;
use tee::tdvf::Tdvf;
use tee::tdx_plan::TdxPlan;
use tee::{Firmware, MeasureInputs};
use vmm::igvm_boot::{load_native, NativeParams};
use vmm::memory::{create, GuestMem};

const PAGE: usize = 4096;
/// Guest RAM of the native loader: small, so writes outside it are exercised too.
const GUEST_MIB: u64 = 16;

/// A vCPU CPUID with XSAVE components, for the CPUID templates of the input.
fn vcpu_cpuid() -> Vec<tee::uapi::KvmCpuidEntry2> {
    let e = |function, index, eax, ebx, ecx| tee::uapi::KvmCpuidEntry2 {
        function,
        index,
        flags: tee::uapi::KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        ..Default::default()
    };
    vec![
        e(0, 0, 0x10, 0x6874_7541, 0),
        e(1, 0, 0x00a0_0f11, 0x0800, 0xfef8_3203),
        e(0xd, 0, 0x207, 0x988, 0x988),
        e(0xd, 1, 0xf, 0x348, 0x1800),
        e(0xd, 2, 0x100, 0x240, 0),
        e(0xd, 9, 0x8, 0xa80, 0),
        e(0xd, 11, u32::MAX, 0, 0b11),
    ]
}

fn guest_memory() -> &'static GuestMem {
    static MEM: OnceLock<GuestMem> = OnceLock::new();
    MEM.get_or_init(|| create(GUEST_MIB).expect("16 MiB of guest memory"))
}

fuzz_target!(|data: &[u8]| {
    let inputs = MeasureInputs {
        firmware: Firmware::Igvm {
            name: "fuzz.igvm".into(),
            data: Vec::new(),
        },
        kernel: None,
        initrd: None,
        cmdline: None,
        vcpus: 2,
        vcpu_signature: 0xa00f11,
        guest_features: 1,
        ovmf_hash: None,
    };
    let mut file = data.to_vec();
    cvmm_fuzz::igvm::fix_header(&mut file);
    if !cvmm_fuzz::igvm::known_igvm_crate_panic(&file) {
        if let Ok(mut plan) = tee::igvm::plan_from_igvm("fuzz.igvm", &file, &inputs) {
            let _ = plan.update_list();
            let _ = plan.digest();
            let _ = plan.fill_cpuid_pages(&vcpu_cpuid());
        }
        if let Ok(plan) = TdxPlan::from_igvm("fuzz.igvm", &file) {
            let _ = plan.mrtd();
            let _ = plan.added_ranges();
            let _ = plan.hob_gpa();
        }
        let params = NativeParams {
            vcpus: 2,
            memory_mib: GUEST_MIB,
            cmdline: "console=ttyS0",
        };
        let _ = load_native(guest_memory(), "fuzz.igvm", &file, &params);
    }

    let pad = (PAGE - data.len() % PAGE) % PAGE;
    let mut image = vec![0u8; pad + data.len()];
    image[pad..].copy_from_slice(data);
    if image.is_empty() {
        return;
    }
    if let Ok(ovmf) = Ovmf::parse("fuzz.fd", &image) {
        let _ = ovmf.gpa();
        let _ = ovmf.sev_sections();
        let _ = ovmf.sev_es_reset_eip();
        let _ = ovmf.sev_hashes_table();
    }
    if let Ok(tdvf) = Tdvf::parse("fuzz.fd", &image) {
        let _ = tdvf.td_hob();
    }
    if let Ok(plan) = TdxPlan::from_tdvf("fuzz.fd", &image) {
        let _ = plan.mrtd();
        let _ = plan.hob_gpa();
    }
});
