//! Hand-written KVM uAPI structs and constants for SEV-SNP and TDX launches (spec §4), each with
//! compile-time size and offset asserts against the kernel header values. Kept here rather than
//! taken from kvm-bindings so the launch sequence and its recording fake share one definition,
//! and so the TDX structs and `KVM_HC_MAP_GPA_RANGE` values (absent from kvm-bindings) exist.

use std::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `_IOWR(KVMIO, 0xba, unsigned long)`.
pub const KVM_MEMORY_ENCRYPT_OP: u64 = 0xc008_aeba;

pub const KVM_X86_DEFAULT_VM: u64 = 0;
pub const KVM_X86_SNP_VM: u64 = 4;
pub const KVM_X86_TDX_VM: u64 = 5;

pub const KVM_CAP_EXIT_HYPERCALL: u32 = 201;
pub const KVM_CAP_USER_MEMORY2: u32 = 231;
pub const KVM_CAP_MEMORY_FAULT_INFO: u32 = 232;
pub const KVM_CAP_MEMORY_ATTRIBUTES: u32 = 233;
pub const KVM_CAP_GUEST_MEMFD: u32 = 234;
pub const KVM_CAP_VM_TYPES: u32 = 235;

pub const KVM_MEM_GUEST_MEMFD: u32 = 1 << 2;
pub const KVM_MEMORY_ATTRIBUTE_PRIVATE: u64 = 1 << 3;
pub const KVM_MEMORY_EXIT_FLAG_PRIVATE: u64 = 1 << 3;

pub const KVM_X86_GRP_SEV: u32 = 1;
pub const KVM_X86_SEV_VMSA_FEATURES: u64 = 0;

pub const KVM_SEV_INIT2: u32 = 22;
pub const KVM_SEV_SNP_LAUNCH_START: u32 = 100;
pub const KVM_SEV_SNP_LAUNCH_UPDATE: u32 = 101;
pub const KVM_SEV_SNP_LAUNCH_FINISH: u32 = 102;

pub const KVM_EXIT_HYPERCALL: u32 = 3;
pub const KVM_EXIT_SYSTEM_EVENT: u32 = 24;
pub const KVM_EXIT_MEMORY_FAULT: u32 = 39;
pub const KVM_EXIT_TDX: u32 = 40;
pub const KVM_SYSTEM_EVENT_SEV_TERM: u32 = 6;
pub const KVM_SYSTEM_EVENT_TDX_FATAL: u32 = 7;

/// Hypercall number of `KVM_HC_MAP_GPA_RANGE`; enable with `KVM_CAP_EXIT_HYPERCALL` bit 12.
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_4K: u64 = 0;
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_2M: u64 = 1 << 0;
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_1G: u64 = 1 << 1;
pub const KVM_MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;
pub const KVM_MAP_GPA_RANGE_DECRYPTED: u64 = 0;

/// `KVM_MAP_GPA_RANGE_ENC_STAT(n)`.
pub const fn map_gpa_range_enc_stat(n: u64) -> u64 {
    n << 4
}

pub const KVM_TDX_CAPABILITIES: u32 = 0;
pub const KVM_TDX_INIT_VM: u32 = 1;
pub const KVM_TDX_INIT_VCPU: u32 = 2;
pub const KVM_TDX_INIT_MEM_REGION: u32 = 3;
pub const KVM_TDX_FINALIZE_VM: u32 = 4;
pub const KVM_TDX_GET_CPUID: u32 = 5;
pub const KVM_TDX_TERMINATE_VM: u32 = 6;
pub const KVM_TDX_MEASURE_MEMORY_REGION: u32 = 1 << 0;

/// `struct kvm_sev_cmd`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct KvmSevCmd {
    pub id: u32,
    pub pad0: u32,
    pub data: u64,
    /// PSP status on failure.
    pub error: u32,
    pub sev_fd: u32,
}

/// `struct kvm_sev_init` (KVM_SEV_INIT2).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct KvmSevInit {
    pub vmsa_features: u64,
    pub flags: u32,
    pub ghcb_version: u16,
    pub pad1: u16,
    pub pad2: [u32; 8],
}

/// `struct kvm_sev_snp_launch_start`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct KvmSevSnpLaunchStart {
    pub policy: u64,
    pub gosvw: [u8; 16],
    pub flags: u16,
    pub pad0: [u8; 6],
    pub pad1: [u64; 4],
}

/// `struct kvm_sev_snp_launch_update`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct KvmSevSnpLaunchUpdate {
    pub gfn_start: u64,
    pub uaddr: u64,
    pub len: u64,
    pub type_: u8,
    pub pad0: u8,
    pub flags: u16,
    pub pad1: u32,
    pub pad2: [u64; 4],
}

/// `struct kvm_sev_snp_launch_finish`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct KvmSevSnpLaunchFinish {
    pub id_block_uaddr: u64,
    pub id_auth_uaddr: u64,
    pub id_block_en: u8,
    pub auth_key_en: u8,
    pub vcek_disabled: u8,
    pub host_data: [u8; 32],
    pub pad0: [u8; 3],
    pub flags: u16,
    pub pad1: [u64; 4],
}

/// `struct kvm_create_guest_memfd`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct KvmCreateGuestMemfd {
    pub size: u64,
    pub flags: u64,
    pub reserved: [u64; 6],
}

/// `struct kvm_userspace_memory_region2`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct KvmUserspaceMemoryRegion2 {
    pub slot: u32,
    pub flags: u32,
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    pub userspace_addr: u64,
    pub guest_memfd_offset: u64,
    pub guest_memfd: u32,
    pub pad1: u32,
    pub pad2: [u64; 14],
}

/// `struct kvm_memory_attributes`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct KvmMemoryAttributes {
    pub address: u64,
    pub size: u64,
    pub attributes: u64,
    pub flags: u64,
}

/// `struct kvm_tdx_cmd`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct KvmTdxCmd {
    pub id: u32,
    pub flags: u32,
    pub data: u64,
    pub hw_error: u64,
}

/// `struct kvm_tdx_init_mem_region`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct KvmTdxInitMemRegion {
    pub source_addr: u64,
    pub gpa: u64,
    pub nr_pages: u64,
}

const _: () = {
    assert!(size_of::<KvmSevCmd>() == 24);
    assert!(offset_of!(KvmSevCmd, data) == 8);
    assert!(offset_of!(KvmSevCmd, error) == 16);
    assert!(offset_of!(KvmSevCmd, sev_fd) == 20);
    assert!(size_of::<KvmSevInit>() == 48);
    assert!(offset_of!(KvmSevInit, ghcb_version) == 12);
    assert!(size_of::<KvmSevSnpLaunchStart>() == 64);
    assert!(offset_of!(KvmSevSnpLaunchStart, gosvw) == 8);
    assert!(offset_of!(KvmSevSnpLaunchStart, flags) == 24);
    assert!(size_of::<KvmSevSnpLaunchUpdate>() == 64);
    assert!(offset_of!(KvmSevSnpLaunchUpdate, len) == 16);
    assert!(offset_of!(KvmSevSnpLaunchUpdate, type_) == 24);
    assert!(offset_of!(KvmSevSnpLaunchUpdate, flags) == 26);
    assert!(size_of::<KvmSevSnpLaunchFinish>() == 88);
    assert!(offset_of!(KvmSevSnpLaunchFinish, id_block_en) == 16);
    assert!(offset_of!(KvmSevSnpLaunchFinish, vcek_disabled) == 18);
    assert!(offset_of!(KvmSevSnpLaunchFinish, host_data) == 19);
    assert!(offset_of!(KvmSevSnpLaunchFinish, flags) == 54);
    assert!(offset_of!(KvmSevSnpLaunchFinish, pad1) == 56);
    assert!(size_of::<KvmCreateGuestMemfd>() == 64);
    assert!(size_of::<KvmUserspaceMemoryRegion2>() == 160);
    assert!(offset_of!(KvmUserspaceMemoryRegion2, guest_memfd_offset) == 32);
    assert!(offset_of!(KvmUserspaceMemoryRegion2, guest_memfd) == 40);
    assert!(size_of::<KvmMemoryAttributes>() == 32);
    assert!(size_of::<KvmTdxCmd>() == 24);
    assert!(offset_of!(KvmTdxCmd, hw_error) == 16);
    assert!(size_of::<KvmTdxInitMemRegion>() == 24);
};

#[cfg(test)]
mod tests {
    use super::*;

    /// `_IOWR(0xAE, 0xba, unsigned long)` spelled out: dir 3, size 8, type 0xAE, nr 0xba.
    #[test]
    fn encrypt_op_number() {
        let ioc = (3u64 << 30) | (8 << 16) | (0xae << 8) | 0xba;
        assert_eq!(KVM_MEMORY_ENCRYPT_OP, ioc);
    }

    /// Pins the `kvm_para.h` values (spec §2 open item).
    #[test]
    fn map_gpa_range_values() {
        assert_eq!(KVM_MAP_GPA_RANGE_ENCRYPTED, map_gpa_range_enc_stat(1));
        assert_eq!(KVM_MAP_GPA_RANGE_DECRYPTED, map_gpa_range_enc_stat(0));
        assert_eq!(
            (
                KVM_MAP_GPA_RANGE_PAGE_SZ_4K,
                KVM_MAP_GPA_RANGE_PAGE_SZ_2M,
                KVM_MAP_GPA_RANGE_PAGE_SZ_1G
            ),
            (0, 1, 2)
        );
        assert_eq!(KVM_HC_MAP_GPA_RANGE, 12);
    }

    #[test]
    fn launch_finish_host_data_lands_at_offset_19() {
        let f = KvmSevSnpLaunchFinish {
            host_data: [0xee; 32],
            ..Default::default()
        };
        let b = f.as_bytes();
        assert_eq!(b.len(), 88);
        assert_eq!(b[18], 0);
        assert_eq!(&b[19..51], &[0xee; 32]);
        assert_eq!(b[51], 0);
    }
}
