//! KVM's side of device interrupts: MSI vectors as GSIs with irqfds, routed through the GSI
//! routing table (which also keeps KVM's default PIC/IOAPIC routes), and ioeventfds for
//! doorbells. Implements the `devices::interrupt` traits.

use devices::interrupt::{InterruptError, IoEventRegistrar, MsiRouter, MsiVector};
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// First GSI handed to MSI vectors (0-23 are the IOAPIC pins).
const FIRST_MSI_GSI: u32 = 24;
/// Upper bound on MSI vectors per VM.
const MAX_MSI_GSI: u32 = 1024;

fn hv(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> InterruptError {
    move |e| InterruptError::Hypervisor {
        what,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

/// The routing table entries KVM installs by default for the in-kernel irqchip.
fn irqchip_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    let mut add = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        v.push(e);
    };
    for gsi in 0..16 {
        if gsi < 8 {
            add(gsi, KVM_IRQCHIP_PIC_MASTER, gsi);
        } else {
            add(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8);
        }
    }
    for gsi in 0..24 {
        add(gsi, KVM_IRQCHIP_IOAPIC, gsi);
    }
    v
}

/// MSI routing for one VM.
pub struct KvmMsiRouter {
    vm: Arc<VmFd>,
    state: Mutex<RouterState>,
}

#[derive(Default)]
struct RouterState {
    next_gsi: u32,
    msi: BTreeMap<u32, (u64, u32)>,
}

impl KvmMsiRouter {
    /// A router for `vm`.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            state: Mutex::new(RouterState {
                next_gsi: FIRST_MSI_GSI,
                msi: BTreeMap::new(),
            }),
        }
    }

    fn commit(&self, st: &RouterState) -> Result<(), InterruptError> {
        let mut entries = irqchip_routes();
        for (&gsi, &(addr, data)) in &st.msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = addr as u32;
            e.u.msi.address_hi = (addr >> 32) as u32;
            e.u.msi.data = data;
            entries.push(e);
        }
        let table = KvmIrqRouting::from_entries(&entries).map_err(|_| InterruptError::NoGsi)?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(hv("KVM_SET_GSI_ROUTING"))
    }
}

impl MsiRouter for KvmMsiRouter {
    fn allocate(&self) -> Result<MsiVector, InterruptError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.next_gsi >= MAX_MSI_GSI {
            return Err(InterruptError::NoGsi);
        }
        let gsi = st.next_gsi;
        st.next_gsi += 1;
        let irqfd =
            EventFd::new(libc::EFD_NONBLOCK).map_err(|source| InterruptError::Hypervisor {
                what: "eventfd",
                source,
            })?;
        self.vm
            .register_irqfd(&irqfd, gsi)
            .map_err(hv("KVM_IRQFD"))?;
        Ok(MsiVector { gsi, irqfd })
    }

    fn route(&self, gsi: u32, addr: u64, data: u32, masked: bool) -> Result<(), InterruptError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let changed = if masked || addr == 0 {
            st.msi.remove(&gsi).is_some()
        } else {
            st.msi.insert(gsi, (addr, data)) != Some((addr, data))
        };
        if changed {
            self.commit(&st)?;
        }
        Ok(())
    }
}

/// ioeventfd registration for one VM.
pub struct KvmIoEvents {
    vm: Arc<VmFd>,
}

impl KvmIoEvents {
    /// Registrar for `vm`.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self { vm }
    }
}

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, evt: &EventFd, addr: u64) -> Result<(), InterruptError> {
        self.vm
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(hv("KVM_IOEVENTFD"))
    }

    fn unregister(&self, evt: &EventFd, addr: u64) -> Result<(), InterruptError> {
        self.vm
            .unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(hv("KVM_IOEVENTFD (deassign)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_match_kvms_irqchip_layout() {
        let r = irqchip_routes();
        assert_eq!(r.len(), 16 + 24);
        // SAFETY: entries built above are irqchip routes.
        let pins: Vec<(u32, u32, u32)> = r
            .iter()
            .map(|e| unsafe { (e.gsi, e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        assert!(pins.contains(&(9, KVM_IRQCHIP_PIC_SLAVE, 1)));
        assert!(pins.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
    }
}
