//! KVM's side of device interrupts: one GSI routing table per VM ([`GsiRouting`]) holding the
//! MSI vectors of virtio (GSIs with irqfds) and either KVM's default PIC/IOAPIC routes
//! (in-kernel irqchip) or the messages of the userspace IOAPIC's pins (split irqchip), plus
//! ioeventfds for doorbells. Implements the `devices::interrupt` and `devices::ioapic` traits.

use crate::spec::IrqChip;
use devices::interrupt::{InterruptError, IoEventRegistrar, MsiRouter, MsiVector};
use devices::ioapic::{IoapicRouting, MsiMessage};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
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

/// The GSI routing table of one VM, shared by everyone who routes: the virtio MSI-X vectors
/// (GSIs from 24) and, in split mode, the IOAPIC pins (GSIs 0-23). `KVM_SET_GSI_ROUTING`
/// replaces the whole table, so every change commits all of it.
pub struct GsiRouting {
    vm: Arc<VmFd>,
    mode: IrqChip,
    state: Mutex<RouteTable>,
}

/// What is routed where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    next_gsi: u32,
    /// MSI-X vectors: GSI -> (address, data).
    msi: BTreeMap<u32, (u64, u32)>,
    /// IOAPIC pins (split mode): pin = GSI -> (address, data).
    pins: BTreeMap<u32, (u64, u32)>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            next_gsi: FIRST_MSI_GSI,
            msi: BTreeMap::new(),
            pins: BTreeMap::new(),
        }
    }
}

fn msi_entry(gsi: u32, addr: u64, data: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = addr as u32;
    e.u.msi.address_hi = (addr >> 32) as u32;
    e.u.msi.data = data;
    e
}

impl RouteTable {
    /// The whole table as KVM gets it: KVM's irqchip routes (in-kernel irqchip) or the IOAPIC
    /// pins' messages (split irqchip), then the MSI-X vectors.
    pub fn entries(&self, mode: IrqChip) -> Vec<kvm_irq_routing_entry> {
        let mut entries = match mode {
            IrqChip::Kernel => irqchip_routes(),
            IrqChip::Split => self
                .pins
                .iter()
                .map(|(&gsi, &(addr, data))| msi_entry(gsi, addr, data))
                .collect(),
        };
        entries.extend(
            self.msi
                .iter()
                .map(|(&gsi, &(addr, data))| msi_entry(gsi, addr, data)),
        );
        entries
    }
}

impl GsiRouting {
    /// The routing of `vm` with the interrupt controller `mode`.
    pub fn new(vm: Arc<VmFd>, mode: IrqChip) -> Self {
        Self {
            vm,
            mode,
            state: Mutex::new(RouteTable::default()),
        }
    }

    /// The VM the table belongs to.
    pub fn vm(&self) -> &Arc<VmFd> {
        &self.vm
    }

    /// The interrupt controller this table is for.
    pub fn mode(&self) -> IrqChip {
        self.mode
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouteTable> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn commit(&self, st: &RouteTable) -> Result<(), InterruptError> {
        let table = KvmIrqRouting::from_entries(&st.entries(self.mode))
            .map_err(|_| InterruptError::NoGsi)?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(hv("KVM_SET_GSI_ROUTING"))
    }
}

impl MsiRouter for GsiRouting {
    fn allocate(&self) -> Result<MsiVector, InterruptError> {
        let mut st = self.lock();
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
        let mut st = self.lock();
        let before = if masked || addr == 0 {
            st.msi.remove(&gsi)
        } else {
            st.msi.insert(gsi, (addr, data))
        };
        let now = st.msi.get(&gsi).copied();
        if before != now {
            if let Err(e) = self.commit(&st) {
                // The table keeps what KVM has.
                match before {
                    Some(v) => st.msi.insert(gsi, v),
                    None => st.msi.remove(&gsi),
                };
                return Err(e);
            }
        }
        Ok(())
    }
}

impl IoapicRouting for GsiRouting {
    fn set_route(&self, pin: u32, msi: Option<MsiMessage>) -> Result<(), InterruptError> {
        if self.mode != IrqChip::Split || pin >= FIRST_MSI_GSI {
            return Err(InterruptError::Hypervisor {
                what: "IOAPIC route",
                source: std::io::Error::other(format!(
                    "GSI {pin}: IOAPIC pins are routed only with the split irqchip, GSIs 0-23"
                )),
            });
        }
        let mut st = self.lock();
        let before = st.pins.clone();
        match msi {
            Some(m) => st.pins.insert(pin, (m.address, m.data)),
            None => st.pins.remove(&pin),
        };
        if st.pins != before {
            if let Err(e) = self.commit(&st) {
                st.pins = before;
                return Err(e);
            }
        }
        Ok(())
    }

    fn inject(&self, msi: MsiMessage) -> Result<(), InterruptError> {
        let m = kvm_msi {
            address_lo: msi.address as u32,
            address_hi: (msi.address >> 32) as u32,
            data: msi.data,
            ..Default::default()
        };
        self.vm
            .signal_msi(m)
            .map(|_| ())
            .map_err(hv("KVM_SIGNAL_MSI"))
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

    /// (gsi, type, address, data) of MSI entries; irqchip entries as (gsi, type, 0, 0).
    fn summary(entries: &[kvm_irq_routing_entry]) -> Vec<(u32, u32, u64, u32)> {
        entries
            .iter()
            .map(|e| match e.type_ {
                // SAFETY: the entry's type says `msi` is the union member in use.
                KVM_IRQ_ROUTING_MSI => unsafe {
                    (
                        e.gsi,
                        e.type_,
                        u64::from(e.u.msi.address_lo) | u64::from(e.u.msi.address_hi) << 32,
                        e.u.msi.data,
                    )
                },
                t => (e.gsi, t, 0, 0),
            })
            .collect()
    }

    fn table() -> RouteTable {
        let mut t = RouteTable::default();
        t.msi.insert(24, (0xfee0_0000, 0x41));
        t.msi.insert(25, (0x1_fee0_1000, 0x42));
        t.pins.insert(4, (0xfee0_0000, 0x30));
        t.pins.insert(9, (0xfee0_0000, 0x8031));
        t
    }

    #[test]
    fn split_table_has_the_pins_as_msi_routes_and_no_irqchip_routes() {
        let s = summary(&table().entries(IrqChip::Split));
        assert_eq!(
            s,
            [
                (4, KVM_IRQ_ROUTING_MSI, 0xfee0_0000, 0x30),
                (9, KVM_IRQ_ROUTING_MSI, 0xfee0_0000, 0x8031),
                (24, KVM_IRQ_ROUTING_MSI, 0xfee0_0000, 0x41),
                (25, KVM_IRQ_ROUTING_MSI, 0x1_fee0_1000, 0x42),
            ]
        );
    }

    #[test]
    fn kernel_table_keeps_kvms_routes_and_ignores_pins() {
        let e = table().entries(IrqChip::Kernel);
        let s = summary(&e);
        assert_eq!(s.len(), 16 + 24 + 2);
        assert!(s[..40].iter().all(|r| r.1 == KVM_IRQ_ROUTING_IRQCHIP));
        assert_eq!(
            s[40..],
            [
                (24, KVM_IRQ_ROUTING_MSI, 0xfee0_0000, 0x41),
                (25, KVM_IRQ_ROUTING_MSI, 0x1_fee0_1000, 0x42),
            ]
        );
    }

    /// A VM on the host's /dev/kvm with `mode`'s irqchip, or `None` (and a SKIPPED line).
    fn kvm_vm(mode: IrqChip) -> Option<Arc<VmFd>> {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            println!("SKIPPED: GSI routing on KVM: no /dev/kvm");
            return None;
        };
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        match mode {
            IrqChip::Kernel => vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP"),
            IrqChip::Split => {
                let mut cap = kvm_bindings::kvm_enable_cap {
                    cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
                    ..Default::default()
                };
                cap.args[0] = 24;
                vm.enable_cap(&cap).expect("KVM_CAP_SPLIT_IRQCHIP");
            }
        }
        Some(Arc::new(vm))
    }

    #[test]
    fn kvm_takes_the_shared_table_in_both_modes() {
        let Some(vm) = kvm_vm(IrqChip::Split) else {
            return;
        };
        let r = GsiRouting::new(vm, IrqChip::Split);
        let v = r.allocate().unwrap();
        assert_eq!(v.gsi, 24);
        r.route(v.gsi, 0xfee0_0000, 0x41, false).unwrap();
        let m = MsiMessage {
            address: 0xfee0_0000,
            data: 0x30,
        };
        r.set_route(4, Some(m)).unwrap();
        r.set_route(4, None).unwrap();
        assert!(r.lock().pins.is_empty());
        assert_eq!(r.lock().msi.len(), 1, "the MSI-X route stays");
        let e = r.set_route(24, Some(m)).unwrap_err().to_string();
        assert!(e.contains("GSI 24"), "{e}");

        // KVM refuses irqchip routes with the split irqchip; the failed change is not kept.
        let Some(vm) = kvm_vm(IrqChip::Split) else {
            return;
        };
        let wrong = GsiRouting::new(vm, IrqChip::Kernel);
        assert!(wrong.route(30, 0xfee0_0000, 0x41, false).is_err());
        assert!(wrong.lock().msi.is_empty());

        let Some(vm) = kvm_vm(IrqChip::Kernel) else {
            return;
        };
        let r = GsiRouting::new(vm, IrqChip::Kernel);
        r.route(24, 0xfee0_0000, 0x41, false).unwrap();
        let e = r.set_route(4, Some(m)).unwrap_err().to_string();
        assert!(e.contains("split irqchip"), "{e}");
    }
}
