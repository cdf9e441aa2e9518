//! A device model wired as cvmm wires a VM, minus KVM, for the `pio_dispatch` target: the port
//! bus with the legacy devices, fw_cfg (with DMA into 1 MiB of guest memory) and the PCI
//! configuration ports 0xCF8/0xCFC; the MMIO bus with ECAM and the PCI BAR window; one virtio
//! device on the modern PCI transport behind fake MSI and ioeventfd backends.

use devices::bus::{MmioBus, PioBus, PioDevice};
use devices::firmware::{DmaMemory, FwCfg, FW_CFG_PORT_BASE, FW_CFG_PORT_LEN};
use devices::interrupt::{InterruptError, IoEventRegistrar, MsiRouter, MsiVector};
use devices::legacy::{AcpiPowerPorts, CmosRtc, DebugPort, PvPanic, SerialPort, StopSignal, I8042};
use devices::pci::{PciBarWindow, PciBus, PciConfigIo, PciConfigMmio, PciWindow};
use devices::virtio::{ActivateContext, ActivateError, VirtioDevice, VirtioPciDevice};
use std::sync::{Arc, Mutex};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory size.
pub const MEM: u64 = 0x10_0000;
/// Port ranges on the bus, as cvmm maps them (base, length).
pub const PORTS: [(u16, u16); 8] = [
    (0x3f8, 8),
    (0x60, 5),
    (0x70, 2),
    (0x80, 1),
    (0x505, 1),
    (0x600, 3),
    (FW_CFG_PORT_BASE, FW_CFG_PORT_LEN),
    (0xcf8, 8),
];
/// ECAM window.
pub const ECAM_BASE: u64 = 0xe000_0000;
pub const ECAM_SIZE: u64 = 0x10_0000;
/// PCI BAR window (the virtio device's BAR 0 is placed at its start).
pub const PCI_MMIO_BASE: u64 = 0xc000_0000;
pub const PCI_MMIO_SIZE: u64 = 0x2000_0000;

/// MSI vectors with throw-away irqfds.
struct FakeMsi;

impl MsiRouter for FakeMsi {
    fn allocate(&self) -> Result<MsiVector, InterruptError> {
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(|source| InterruptError::Hypervisor {
            what: "eventfd",
            source,
        })?;
        Ok(MsiVector { gsi: 24, irqfd })
    }
    fn route(&self, _: u32, _: u64, _: u32, _: bool) -> Result<(), InterruptError> {
        Ok(())
    }
}

/// Accepts every ioeventfd (registration is the hypervisor's business).
struct FakeIoEvents;

impl IoEventRegistrar for FakeIoEvents {
    fn register(&self, _: &EventFd, _: u64) -> Result<(), InterruptError> {
        Ok(())
    }
    fn unregister(&self, _: &EventFd, _: u64) -> Result<(), InterruptError> {
        Ok(())
    }
}

/// A virtio device with two queues and 8 bytes of config that keeps its queues when started.
struct FakeDevice {
    config: [u8; 8],
    active: Option<ActivateContext>,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        devices::virtio::TYPE_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn features(&self) -> u64 {
        devices::virtio::F_RING_EVENT_IDX | 1 << 5
    }
    fn ack_features(&mut self, _features: u64) {}
    fn config_size(&self) -> u32 {
        self.config.len() as u32
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) {
        devices::virtio::read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) {
        let start = (offset as usize).min(self.config.len());
        let end = start.saturating_add(data.len()).min(self.config.len());
        self.config[start..end].copy_from_slice(&data[..end - start]);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.active = Some(ctx);
        Ok(())
    }
    fn reset(&mut self) {
        self.active = None;
    }
}

/// The buses of one fuzzed VM.
pub struct Machine {
    pub pio: PioBus,
    pub mmio: MmioBus,
    pub mem: Arc<GuestMemoryMmap<()>>,
}

impl Machine {
    /// Builds the buses with every device in place.
    pub fn new() -> Self {
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)])
                .expect("1 MiB maps"),
        );
        let stop = StopSignal::new().expect("eventfd");
        let mut fw = FwCfg::new().with_dma(mem.clone() as Arc<dyn DmaMemory>);
        fw.set_u32(devices::firmware::fw_cfg::keys::NB_CPUS, 2)
            .expect("free key");
        fw.set_item(
            devices::firmware::fw_cfg::keys::KERNEL_CMDLINE,
            b"console=ttyS0\0".to_vec(),
        )
        .expect("free key");
        fw.add_file("etc/e820", vec![0x11; 40]).expect("valid file");
        fw.add_file("bootorder", b"/rom@genroms/linuxboot_dma.bin\0".to_vec())
            .expect("valid file");
        fw.add_file("etc/acpi/tables", vec![0x22; 3000])
            .expect("valid file");
        let serial = SerialPort::new(
            EventFd::new(EFD_NONBLOCK).expect("eventfd"),
            Box::new(std::io::sink()),
        );
        let devs: Vec<Arc<Mutex<dyn PioDevice>>> = vec![
            Arc::new(Mutex::new(serial)),
            Arc::new(Mutex::new(I8042::new(stop.clone()))),
            Arc::new(Mutex::new(CmosRtc::with_clock(Box::new(|| 1_700_000_000)))),
            Arc::new(Mutex::new(DebugPort::new(Box::new(|_, _| {})))),
            Arc::new(Mutex::new(PvPanic::new(stop.clone()))),
            Arc::new(Mutex::new(AcpiPowerPorts::new(stop))),
            Arc::new(Mutex::new(fw)),
        ];
        let mut pio = PioBus::default();
        for ((base, len), dev) in PORTS.iter().zip(devs) {
            pio.insert(u64::from(*base), u64::from(*len), dev)
                .expect("ports do not overlap");
        }

        let bus = Arc::new(Mutex::new(PciBus::new(
            PciWindow {
                base: PCI_MMIO_BASE,
                size: PCI_MMIO_SIZE,
            },
            None,
        )));
        let dev = FakeDevice {
            config: [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0],
            active: None,
        };
        let pci = VirtioPciDevice::new(
            Box::new(dev),
            mem.clone(),
            Arc::new(FakeMsi),
            Arc::new(FakeIoEvents),
        )
        .expect("valid virtio device");
        devices::bus::lock(&bus)
            .add_device(Arc::new(Mutex::new(pci)))
            .expect("free slot");
        let (cf8, len) = PORTS[7];
        pio.insert(
            u64::from(cf8),
            u64::from(len),
            Arc::new(Mutex::new(PciConfigIo::new(bus.clone()))),
        )
        .expect("0xcf8 is free");
        let mut mmio = MmioBus::default();
        mmio.insert(
            ECAM_BASE,
            ECAM_SIZE,
            Arc::new(Mutex::new(PciConfigMmio::new(bus.clone()))),
        )
        .expect("ECAM is free");
        mmio.insert(
            PCI_MMIO_BASE,
            PCI_MMIO_SIZE,
            Arc::new(Mutex::new(PciBarWindow::new(bus, PCI_MMIO_BASE))),
        )
        .expect("the BAR window is free");
        Self { pio, mmio, mem }
    }
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}
