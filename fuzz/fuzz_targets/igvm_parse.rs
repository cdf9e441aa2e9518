//! Firmware parsers: `tee::igvm::plan_from_igvm` on the input as an IGVM file (its v1 fixed
//! header's total size and CRC32 fixed up first, see `cvmm_fuzz::igvm::fix_header`), and
//! `tee::ovmf::Ovmf::parse` on the input right-aligned in a 4 KiB-multiple image (the OVMF
//! footer table is found from the end), plus the accessors that read its SEV metadata.
//! IGVM inputs that hit panics already known in the igvm crate are skipped (see
//! `cvmm_fuzz::igvm::known_igvm_crate_panic`); the OVMF half still sees them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tee::ovmf::Ovmf;
use tee::{Firmware, MeasureInputs};

const PAGE: usize = 4096;

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
        if let Ok(plan) = tee::igvm::plan_from_igvm("fuzz.igvm", &file, &inputs) {
            let _ = plan.update_list();
            let _ = plan.digest();
        }
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
});
