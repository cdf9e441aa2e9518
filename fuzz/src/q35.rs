//! The firmware-boot platform wired as cvmm wires it, minus KVM, for the `firmware_platform`
//! target: the q35 MCH and ICH9 LPC on PCI bus 0 (ports 0xCF8/0xCFC with the 0xCF9 reset
//! register, 256-bus ECAM), the ACPI PM block the LPC decodes, the debug console, port 0x92,
//! the reset-only i8042, fw_cfg with the ACPI tables and loader script cvmm builds, an e820
//! map and a bzImage, two CFI flash units (read-only code, writable variables) in memory, and
//! the userspace IOAPIC of the split irqchip behind a routing table that only records.

use devices::bus::{MmioBus, PioBus, PioDevice};
use devices::chipset::{
    AcpiPm, DebugConsole, Ich9Lpc, PmDecode, Q35Mch, DEBUGCON_PORT, LPC_SLOT, PM_BLOCK_LEN,
    Q35_ECAM_BASE, Q35_ECAM_SIZE, Q35_PM_BASE,
};
use devices::firmware::{DmaMemory, FwCfg, LinuxBoot, Pflash, FW_CFG_PORT_BASE, FW_CFG_PORT_LEN};
use devices::interrupt::InterruptError;
use devices::ioapic::{Ioapic, IoapicRouting, MsiMessage, IOAPIC_BASE, IOAPIC_MMIO_LEN};
use devices::legacy::{StopSignal, SystemControlA, I8042};
use devices::pci::{PciBus, PciConfigIo, PciConfigMmio, PciWindow};
use std::sync::{Arc, Mutex};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest memory size (fw_cfg DMA targets).
pub const MEM: u64 = 0x10_0000;
/// Port ranges on the bus (base, length).
pub const PORTS: [(u16, u16); 6] = [
    (0x60, 5),
    (0x92, 1),
    (DEBUGCON_PORT, 1),
    (FW_CFG_PORT_BASE, FW_CFG_PORT_LEN),
    (Q35_PM_BASE, PM_BLOCK_LEN),
    (0xcf8, 8),
];
/// The flash units: variables (writable) below code (read-only), 16 KiB each.
pub const FLASH_LEN: u64 = 0x4000;
pub const VARS_BASE: u64 = 0xffff_8000;
pub const CODE_BASE: u64 = 0xffff_c000;

/// The buses of one fuzzed firmware-boot VM.
pub struct Q35Machine {
    pub pio: PioBus,
    pub mmio: MmioBus,
    pub mem: Arc<GuestMemoryMmap<()>>,
    pub stop: StopSignal,
    /// The IOAPIC (also on the MMIO bus), for line changes and EOIs.
    pub ioapic: Arc<Mutex<Ioapic>>,
}

/// Routes and injections go nowhere; the IOAPIC's own checks are what is fuzzed.
struct NoRouting;

impl IoapicRouting for NoRouting {
    fn set_route(&self, _pin: u32, _msi: Option<MsiMessage>) -> Result<(), InterruptError> {
        Ok(())
    }
    fn inject(&self, _msi: MsiMessage) -> Result<(), InterruptError> {
        Ok(())
    }
}

/// A bzImage-shaped blob: "HdrS", protocol 2.12, one setup sector.
fn tiny_bzimage() -> Vec<u8> {
    let mut k = vec![0u8; 0x1000];
    k[0x1f1] = 1;
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x020cu16.to_le_bytes());
    k[0x211] = 1; // LOADED_HIGH
    k[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes());
    k
}

impl Q35Machine {
    /// Builds the buses with every device in place.
    pub fn new() -> Self {
        let mem = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)])
                .expect("1 MiB maps"),
        );
        let stop = StopSignal::new().expect("eventfd");
        let mut fw = FwCfg::new().with_dma(mem.clone() as Arc<dyn DmaMemory>);
        fw.set_u16(devices::firmware::fw_cfg::keys::NB_CPUS, 2)
            .expect("free key");
        fw.add_file("etc/e820", vec![0x11; 40]).expect("valid file");
        vmm::acpi::firmware_tables(2, &vmm::acpi::AcpiPlatform::q35(Some((1 << 32, 1 << 36))))
            .build()
            .expect("cvmm's tables build")
            .install(&mut fw)
            .expect("valid files");
        fw.add_linux_boot(LinuxBoot {
            kernel: tiny_bzimage(),
            initrd: Some(vec![0x33; 5000]),
            cmdline: "console=ttyS0".into(),
            below_4g_mem: 256 << 20,
            pristine_setup: false,
        })
        .expect("valid kernel");
        let decode = Arc::new(PmDecode::default());
        let devs: Vec<Arc<Mutex<dyn PioDevice>>> = vec![
            Arc::new(Mutex::new(I8042::reset_only(stop.clone()))),
            Arc::new(Mutex::new(SystemControlA::new(stop.clone()))),
            Arc::new(Mutex::new(DebugConsole::new(Box::new(|_| {})))),
            Arc::new(Mutex::new(fw)),
            Arc::new(Mutex::new(AcpiPm::with_clock(
                decode.clone(),
                stop.clone(),
                Box::new(|| std::time::Duration::from_millis(7)),
            ))),
        ];
        let mut pio = PioBus::default();
        for ((base, len), dev) in PORTS.iter().zip(devs) {
            pio.insert(u64::from(*base), u64::from(*len), dev)
                .expect("ports do not overlap");
        }
        let mut bus = PciBus::with_host_bridge(
            PciWindow {
                base: 0xc000_0000,
                size: 0x3c00_0000,
            },
            None,
            Arc::new(Mutex::new(Q35Mch::new())),
        );
        bus.add_device_at(LPC_SLOT, Arc::new(Mutex::new(Ich9Lpc::new(decode))))
            .expect("slot 31 is free");
        let bus = Arc::new(Mutex::new(bus));
        let (cf8, len) = PORTS[5];
        pio.insert(
            u64::from(cf8),
            u64::from(len),
            Arc::new(Mutex::new(
                PciConfigIo::new(bus.clone()).with_reset(stop.clone()),
            )),
        )
        .expect("0xcf8 is free");
        let mut mmio = MmioBus::default();
        mmio.insert(
            Q35_ECAM_BASE,
            Q35_ECAM_SIZE,
            Arc::new(Mutex::new(PciConfigMmio::new(bus))),
        )
        .expect("ECAM is free");
        let code: Vec<u8> = (0..FLASH_LEN).map(|i| (i % 251) as u8).collect();
        for (base, data, ro) in [
            (VARS_BASE, vec![0xff; FLASH_LEN as usize], false),
            (CODE_BASE, code, true),
        ] {
            let f = Pflash::new(data, ro).expect("sector multiple");
            mmio.insert(base, FLASH_LEN, Arc::new(Mutex::new(f)))
                .expect("flash ranges are free");
        }
        let ioapic = Arc::new(Mutex::new(Ioapic::new(Arc::new(NoRouting))));
        mmio.insert(IOAPIC_BASE, IOAPIC_MMIO_LEN, ioapic.clone())
            .expect("the IOAPIC window is free");
        Self {
            pio,
            mmio,
            mem,
            stop,
            ioapic,
        }
    }
}

impl Default for Q35Machine {
    fn default() -> Self {
        Self::new()
    }
}
