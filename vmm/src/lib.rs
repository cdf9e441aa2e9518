//! One cvmm virtual machine: a [`spec::VmSpec`] becomes a KVM VM with guest memory, vCPUs,
//! devices and a booted guest (bzImage/PVH direct boot, native IGVM, SEV-SNP launch), run until
//! the guest stops, with a boot timeline of every phase.

pub mod acpi;
pub mod boot;
pub mod console;
pub mod control;
pub mod cpuid;
pub mod devices;
pub mod error;
pub mod firmware;
pub mod igvm_boot;
pub mod irq;
pub mod layout;
pub mod memory;
pub mod power_button;
pub mod qemu_args;
pub mod regs;
pub mod spec;
pub mod tee_kvm;
pub mod timeline;
pub mod vcpu;
pub mod vm;

pub use vm::{run_spec, run_spec_with, VmExit};
