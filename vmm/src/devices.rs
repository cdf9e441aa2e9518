//! PCI devices of a VM: the PCI bus (config mechanisms #1 and ECAM, the BAR window) and the
//! virtio devices the spec asks for (9p shares, later the NIC), on the virtio-pci transport
//! with MSI-X through KVM routes and doorbells through ioeventfds.

use crate::acpi::{Q35_MMIO32_END, Q35_MMIO32_START};
use crate::error::{Result, VmmError};
use crate::irq::{GsiRouting, KvmIoEvents};
use crate::layout::*;
use crate::spec::{ShareSource, VmSpec};
use devices::bus::{MmioBus, PioBus};
use devices::chipset::{Ich9Lpc, PmDecode, Q35Mch, LPC_SLOT, Q35_ECAM_BASE, Q35_ECAM_SIZE};
use devices::legacy::StopSignal;
use devices::net::virtio::{VirtioNet, DEFAULT_GUEST_MAC};
use devices::net::{PortForward, UserNet, UserNetConfig};
use devices::p9::virtio::Virtio9p;
use devices::p9::{DirectoryShare, MemoryShare, NinePConfig, Share};
use devices::pci::{PciBarWindow, PciBus, PciConfigIo, PciConfigMmio, PciWindow};
use devices::virtio::{GuestMem, VirtioDevice, VirtioPciDevice};
use std::sync::{Arc, Mutex};

/// The NIC with its user-mode network and the spec's port forwards (sockets bound or
/// inherited here, so a taken port fails the VM before it boots).
fn user_net(spec: &VmSpec, timeline: &crate::timeline::Timeline) -> Result<VirtioNet> {
    let mut forwards = Vec::new();
    for f in &spec.forwards {
        let listener = match f.listen_fd {
            Some(fd) => {
                // SAFETY: the parent handed this fd to us for this purpose; nothing else in
                // this process owns or closes it.
                let l =
                    unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                l.local_addr().map_err(|e| {
                    VmmError::Input(format!(
                        "--forward-fd {fd}: not a listening TCP socket: {e}"
                    ))
                })?;
                l
            }
            None => {
                let addr = f
                    .host_addr
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
                std::net::TcpListener::bind((addr, f.host_port)).map_err(|e| {
                    VmmError::Input(format!(
                        "--forward tcp:{addr}:{}-:{}: cannot listen: {e}",
                        f.host_port, f.guest_port
                    ))
                })?
            }
        };
        if let Ok(a) = listener.local_addr() {
            tracing::info!(host = %a, guest_port = f.guest_port, "port forward");
        }
        forwards.push(PortForward {
            listener,
            guest_port: f.guest_port,
        });
    }
    let cfg = match UserNetConfig::from_system(Vec::new()) {
        Ok(c) => UserNetConfig { forwards, ..c },
        Err(e) => {
            tracing::warn!("no DNS upstream for the guest: {e}");
            UserNetConfig::with_dns(forwards, Vec::new())
        }
    };
    let mut net = UserNet::new(cfg).map_err(|e| VmmError::Input(format!("guest network: {e}")))?;
    let tl = timeline.clone();
    net.set_phase_sink(Box::new(move |phase| tl.mark(phase)));
    Ok(VirtioNet::new(DEFAULT_GUEST_MAC, net))
}

/// Which chipset the PCI bus sits on.
pub enum PciPlatform {
    /// Direct boot: a plain host bridge, ECAM for bus 0, one 32-bit window.
    Direct,
    /// Firmware boot: the q35 MCH and ICH9 LPC (whose PMBASE drives `pm`), ECAM for 256
    /// buses where OVMF puts it, the 32-bit window above it and a 64-bit window.
    Q35 {
        pm: Arc<PmDecode>,
        mmio64: Option<(u64, u64)>,
    },
}

/// Builds the PCI bus with the spec's virtio devices and maps it on the buses; port 0xCF9
/// resets the VM through `stop`. MSI-X vectors are routed through the VM's `routing` table.
pub fn attach_pci(
    spec: &VmSpec,
    platform: PciPlatform,
    routing: &Arc<GsiRouting>,
    mem: &GuestMem,
    buses: (&mut PioBus, &mut MmioBus),
    stop: &StopSignal,
    timeline: &crate::timeline::Timeline,
) -> Result<Arc<Mutex<PciBus>>> {
    let (pio, mmio) = buses;
    let router = routing.clone();
    let ioevents = Arc::new(KvmIoEvents::new(routing.vm().clone()));
    let (bus, ecam, windows) = match platform {
        PciPlatform::Direct => (
            PciBus::new(
                PciWindow {
                    base: PCI_MMIO_START,
                    size: PCI_MMIO_SIZE,
                },
                None,
            ),
            (PCI_ECAM_BASE, PCI_ECAM_SIZE),
            vec![(PCI_MMIO_START, PCI_MMIO_SIZE)],
        ),
        PciPlatform::Q35 { pm, mmio64 } => {
            let mmio32 = (Q35_MMIO32_START, Q35_MMIO32_END - Q35_MMIO32_START);
            // BARs start in the 32-bit window; the firmware moves them where it likes.
            let mut bus = PciBus::with_host_bridge(
                PciWindow {
                    base: mmio32.0,
                    size: mmio32.1,
                },
                None,
                Arc::new(Mutex::new(Q35Mch::new())),
            );
            bus.add_device_at(LPC_SLOT, Arc::new(Mutex::new(Ich9Lpc::new(pm))))
                .map_err(|e| VmmError::Memory(format!("ICH9 LPC: {e}")))?;
            let windows = std::iter::once(mmio32).chain(mmio64).collect();
            (bus, (Q35_ECAM_BASE, Q35_ECAM_SIZE), windows)
        }
    };
    let bus = Arc::new(Mutex::new(bus));

    let add = |dev: Box<dyn VirtioDevice>, what: &str| -> Result<()> {
        let pci = VirtioPciDevice::new(dev, mem.clone(), router.clone(), ioevents.clone())
            .map_err(|e| VmmError::Memory(format!("{what}: {e}")))?;
        let slot = devices::bus::lock(&bus)
            .add_device(Arc::new(Mutex::new(pci)))
            .map_err(|e| VmmError::Input(format!("{what}: {e}")))?;
        tracing::debug!(slot, "{what} on PCI");
        Ok(())
    };

    if spec.net {
        add(Box::new(user_net(spec, timeline)?), "virtio-net")?;
    }

    for share in &spec.shares {
        let what = format!("--share {}", share.tag);
        let backend = match &share.source {
            ShareSource::Directory(dir) => Share::Directory(
                DirectoryShare::open(dir)
                    .map_err(|e| VmmError::Input(format!("{what}={}: {e}", dir.display())))?,
            ),
            ShareSource::Memory(files) => {
                let mut m = MemoryShare::new();
                for (name, data) in files {
                    m.add_file(name, data.clone(), 0o644)
                        .map_err(|e| VmmError::Input(format!("{what}: file '{name}': {e}")))?;
                }
                Share::Memory(m)
            }
        };
        let dev = Virtio9p::new(&share.tag, backend, NinePConfig::default())
            .map_err(|e| VmmError::Input(format!("{what}: {e}")))?;
        add(Box::new(dev), &what)?;
    }

    let map_err = |e: devices::bus::BusError| VmmError::Memory(format!("PCI: {e}"));
    pio.insert(
        u64::from(PCI_CONFIG_IO_PORT),
        8,
        Arc::new(Mutex::new(
            PciConfigIo::new(bus.clone()).with_reset(stop.clone()),
        )),
    )
    .map_err(map_err)?;
    mmio.insert(
        ecam.0,
        ecam.1,
        Arc::new(Mutex::new(PciConfigMmio::new(bus.clone()))),
    )
    .map_err(map_err)?;
    for (base, size) in windows {
        mmio.insert(
            base,
            size,
            Arc::new(Mutex::new(PciBarWindow::new(bus.clone(), base))),
        )
        .map_err(map_err)?;
    }
    Ok(bus)
}
