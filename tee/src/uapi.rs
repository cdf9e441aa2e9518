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

/// `KVM_CAP_SPLIT_IRQCHIP`: TDX vCPUs need the local APIC in KVM and the IOAPIC in userspace.
pub const KVM_CAP_SPLIT_IRQCHIP: u32 = 121;
/// IOAPIC pins routed through the split irqchip (`args[0]` of the capability).
pub const SPLIT_IRQCHIP_IOAPIC_PINS: u64 = 24;
/// `KVM_CAP_X86_APIC_BUS_CYCLES_NS`: the local APIC timer's bus period (VM, before vCPUs).
pub const KVM_CAP_X86_APIC_BUS_CYCLES_NS: u32 = 237;
/// The TDX module fixes the core crystal clock at 25 MHz: 40 ns per APIC bus cycle.
pub const TDX_APIC_BUS_CYCLES_NS: u64 = 40;
/// XFAM bits every TD has: x87 and SSE state.
pub const TDX_XFAM_REQUIRED: u64 = 0x3;
/// `kvm_cpuid_entry2.flags`: the entry depends on the sub-leaf index.
pub const KVM_CPUID_FLAG_SIGNIFCANT_INDEX: u32 = 1;

/// TDG.VP.VMCALL leaves that reach userspace as `KVM_EXIT_TDX` (`kvm_run.tdx.nr`).
pub const TDVMCALL_GET_TD_VM_CALL_INFO: u64 = 0x10000;
pub const TDVMCALL_MAP_GPA: u64 = 0x10001;
pub const TDVMCALL_GET_QUOTE: u64 = 0x10002;
pub const TDVMCALL_REPORT_FATAL_ERROR: u64 = 0x10003;
pub const TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT: u64 = 0x10004;

/// TDG.VP.VMCALL status codes userspace puts in `kvm_run.tdx.*.ret` (spec §2).
pub const TDVMCALL_STATUS_SUCCESS: u64 = 0;
pub const TDVMCALL_STATUS_RETRY: u64 = 1;
pub const TDVMCALL_STATUS_INVALID_OPERAND: u64 = 0x8000_0000_0000_0000;
pub const TDVMCALL_STATUS_ALIGN_ERROR: u64 = 0x8000_0000_0000_0002;
pub const TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED: u64 = 0x8000_0000_0000_0003;
/// GetTdVmCallInfo leaf 1, R11: SetupEventNotifyInterrupt is implemented by userspace.
pub const TDVMCALLINFO_1_R11_SETUP_EVENT_NOTIFY: u64 = 1 << 1;

/// `struct kvm_cpuid_entry2`.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct KvmCpuidEntry2 {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
    pub padding: [u32; 3],
}

/// Fixed part of `struct kvm_tdx_capabilities`, up to and including the `kvm_cpuid2` header
/// (`nent`, `padding`); `nent` × [`KvmCpuidEntry2`] follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct KvmTdxCapabilities {
    pub supported_attrs: u64,
    pub supported_xfam: u64,
    pub kernel_tdvmcallinfo_1_r11: u64,
    pub user_tdvmcallinfo_1_r11: u64,
    pub kernel_tdvmcallinfo_1_r12: u64,
    pub user_tdvmcallinfo_1_r12: u64,
    pub reserved: [u64; 250],
    pub nent: u32,
    pub padding: u32,
}

/// Fixed part of `struct kvm_tdx_init_vm`, up to and including the `kvm_cpuid2` header;
/// `nent` × [`KvmCpuidEntry2`] follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct KvmTdxInitVm {
    pub attributes: u64,
    pub xfam: u64,
    pub mrconfigid: [u8; 48],
    pub mrowner: [u8; 48],
    pub mrownerconfig: [u8; 48],
    pub reserved: [u64; 12],
    pub nent: u32,
    pub padding: u32,
}

/// `kvm_run.tdx` (exit reason `KVM_EXIT_TDX`), at offset 32 of `struct kvm_run`. The union
/// members share `ret` at offset 16; `args` holds the rest of the member:
/// get_quote {gpa, size}; get_tdvmcall_info {leaf, r11, r12, r13, r14};
/// setup_event_notify {vector}; unknown {data[5]}.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct KvmRunTdx {
    pub flags: u64,
    pub nr: u64,
    pub ret: u64,
    pub args: [u64; 5],
}

/// Offset of the exit union (and so of [`KvmRunTdx`]) in `struct kvm_run`.
pub const KVM_RUN_EXIT_UNION_OFFSET: usize = 32;

/// Header of the GetQuote shared buffer (GHCI `TDG.VP.VMCALL<GetQuote>`); the TDREPORT (in)
/// and the quote (out) follow it.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct TdxGetQuoteHeader {
    pub structure_version: u64,
    pub error_code: u64,
    pub in_len: u32,
    pub out_len: u32,
}

const _: () = {
    assert!(size_of::<KvmCpuidEntry2>() == 40);
    assert!(offset_of!(KvmCpuidEntry2, eax) == 12);
    assert!(offset_of!(KvmCpuidEntry2, padding) == 28);
    assert!(size_of::<KvmTdxCapabilities>() == 2048 + 8);
    assert!(offset_of!(KvmTdxCapabilities, user_tdvmcallinfo_1_r12) == 40);
    assert!(offset_of!(KvmTdxCapabilities, reserved) == 48);
    assert!(offset_of!(KvmTdxCapabilities, nent) == 2048);
    assert!(size_of::<KvmTdxInitVm>() == 256 + 8);
    assert!(offset_of!(KvmTdxInitVm, mrconfigid) == 16);
    assert!(offset_of!(KvmTdxInitVm, mrowner) == 64);
    assert!(offset_of!(KvmTdxInitVm, mrownerconfig) == 112);
    assert!(offset_of!(KvmTdxInitVm, reserved) == 160);
    assert!(offset_of!(KvmTdxInitVm, nent) == 256);
    assert!(size_of::<KvmRunTdx>() == 64);
    assert!(offset_of!(KvmRunTdx, nr) == 8);
    assert!(offset_of!(KvmRunTdx, ret) == 16);
    assert!(offset_of!(KvmRunTdx, args) == 24);
    assert!(size_of::<TdxGetQuoteHeader>() == 24);
    assert!(offset_of!(TdxGetQuoteHeader, in_len) == 16);
    assert!(offset_of!(TdxGetQuoteHeader, out_len) == 20);
    assert!(offset_of!(KvmTdxCmd, data) == 8);
    assert!(offset_of!(KvmTdxInitMemRegion, nr_pages) == 16);
};

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
