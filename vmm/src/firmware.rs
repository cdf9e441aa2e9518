//! Firmware boot (OVMF and alike) on cvmm's q35-like platform: guest RAM laid out as QEMU's
//! q35 does, the firmware image mapped so that it ends at 4 GiB (a ROM for `--firmware`, or
//! CFI flash units for `--firmware-code`/`--firmware-vars`), and fw_cfg carrying the e820
//! map, the vCPU count, the ACPI tables with their loader script, `opt/` strings and
//! `--kernel/--initrd/--append`. The vCPUs start from the architectural reset state.
//!
//! Flash in read-array mode is a read-only KVM memslot, so the firmware executes in place and
//! reads never exit; writes exit as MMIO to the flash model. When a command puts the flash
//! into a status or query mode the memslot is removed, so reads reach the model too, and put
//! back when the flash returns to read-array mode (QEMU's "romd" mode).

use crate::error::{kvm_call, Result, VmmError};
use crate::layout::HIGH_RAM_START;
use crate::memory::GuestMem;
use crate::spec::VmSpec;
use crate::timeline::Timeline;
use devices::bus::MmioDevice;
use devices::chipset::Q35_ECAM_BASE;
use devices::firmware::files::{
    boot_fail_wait_file, bootorder_file, e820_file, system_states_file, BOOTORDER_FILE,
    BOOT_FAIL_WAIT_FILE, E820_FILE, E820_RAM, E820_RESERVED, SYSTEM_STATES_FILE,
};
use devices::firmware::fw_cfg::keys;
use devices::firmware::{
    AcpiTables, E820Entry, FlashArray, FwCfg, LinuxBoot, Pflash, PFLASH_SECTOR_SIZE,
};
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use std::path::Path;
use std::sync::Arc;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

/// KVM's TSS for firmware boot: below the flash, where QEMU puts it (e820 reserves it).
pub const FW_TSS_ADDR: usize = 0xfeff_d000;
/// KVM's identity-map page, just below the TSS.
pub const FW_IDENTITY_MAP_ADDR: u64 = 0xfeff_c000;
/// Largest firmware (all units together) cvmm maps, as QEMU's pc machines allow.
pub const MAX_FIRMWARE_BYTES: u64 = 8 << 20;
/// First KVM memslot of the firmware units (guest RAM uses the lowest slots).
const FLASH_SLOT_BASE: u32 = 16;
/// The signature of a UEFI firmware volume header, at offset 40 of the volume.
const FV_SIGNATURE: &[u8; 4] = b"_FVH";
const FV_SIGNATURE_OFFSET: usize = 40;

/// Bytes of RAM below 4 GiB for a firmware boot: as QEMU's q35, everything when the guest
/// is smaller than 2.75 GiB (RAM must end below ECAM at 0xB0000000), else 2 GiB.
pub fn low_ram_bytes(memory_mib: u64) -> u64 {
    let bytes = memory_mib << 20;
    if bytes >= Q35_ECAM_BASE {
        0x8000_0000
    } else {
        bytes
    }
}

/// The memory map in `etc/e820`: low RAM (from 0, as QEMU gives it), RAM above 4 GiB, and
/// the KVM TSS/identity-map pages as reserved.
pub fn e820(memory_mib: u64) -> Vec<E820Entry> {
    let bytes = memory_mib << 20;
    let low = low_ram_bytes(memory_mib);
    let mut m = vec![E820Entry {
        addr: 0,
        size: low,
        kind: E820_RAM,
    }];
    if bytes > low {
        m.push(E820Entry {
            addr: HIGH_RAM_START,
            size: bytes - low,
            kind: E820_RAM,
        });
    }
    m.push(E820Entry {
        addr: FW_IDENTITY_MAP_ADDR,
        size: 0x4000,
        kind: E820_RESERVED,
    });
    m
}

/// The 64-bit PCI window firmware may use: from the first GiB boundary above RAM (and 4 GiB)
/// to the end of the guest's physical address space. OVMF places its window there, either
/// right above RAM or, when it trusts the CPUID address width, at the top.
pub fn mmio64_window(memory_mib: u64, phys_bits: u8) -> Option<(u64, u64)> {
    let bytes = memory_mib << 20;
    let high_end = HIGH_RAM_START + bytes.saturating_sub(low_ram_bytes(memory_mib));
    let start = high_end.next_multiple_of(1 << 30);
    let end = 1u64.checked_shl(u32::from(phys_bits.clamp(36, 52)))?;
    (end > start).then(|| (start, end - start))
}

/// How a firmware unit answers writes.
enum UnitKind {
    /// `--firmware`: read-only memory, writes are dropped (QEMU's `-bios`).
    Rom,
    /// A CFI flash unit (code: read-only flash; vars: writable, persisted to its file).
    Flash(Box<Pflash>),
}

/// One firmware image mapped below 4 GiB.
pub struct FirmwareUnit {
    what: &'static str,
    gpa: u64,
    len: u64,
    mem: GuestMemoryMmap<()>,
    slot: u32,
    kind: UnitKind,
    vm: Option<Arc<VmFd>>,
    mapped: bool,
}

/// The flash array of a unit: the memory behind its memslot.
struct RegionArray {
    mem: GuestMemoryMmap<()>,
    base: u64,
    len: usize,
}

impl FlashArray for RegionArray {
    fn len(&self) -> usize {
        self.len
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        if let Err(e) = self
            .mem
            .read_slice(buf, GuestAddress(self.base + offset as u64))
        {
            tracing::warn!("flash read at {offset:#x}: {e}");
        }
    }
    fn write(&mut self, offset: usize, data: &[u8]) {
        if let Err(e) = self
            .mem
            .write_slice(data, GuestAddress(self.base + offset as u64))
        {
            tracing::warn!("flash write at {offset:#x}: {e}");
        }
    }
}

fn map_region(what: &str, gpa: u64, data: &[u8]) -> Result<GuestMemoryMmap<()>> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(gpa), data.len())])
        .map_err(|e| VmmError::Memory(format!("{what}: cannot map {} bytes: {e}", data.len())))?;
    mem.write_slice(data, GuestAddress(gpa))
        .map_err(|e| VmmError::Memory(format!("{what}: {e}")))?;
    Ok(mem)
}

fn check_image(what: &str, path: &Path, len: u64, needs_volume: Option<&[u8]>) -> Result<()> {
    if len == 0 || !len.is_multiple_of(PFLASH_SECTOR_SIZE) {
        return Err(VmmError::Input(format!(
            "{what} '{}': {len} bytes is not a non-zero multiple of 4 KiB",
            path.display()
        )));
    }
    if let Some(data) = needs_volume {
        let has_volume = data
            .chunks(PFLASH_SECTOR_SIZE as usize)
            .any(|b| b.get(FV_SIGNATURE_OFFSET..FV_SIGNATURE_OFFSET + 4) == Some(FV_SIGNATURE));
        if !has_volume {
            return Err(VmmError::Input(format!(
                "{what} '{}': not a UEFI firmware image (no firmware volume header '_FVH' in any 4 KiB block)",
                path.display()
            )));
        }
    }
    Ok(())
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| VmmError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and places the firmware images of `spec`: `--firmware` alone as a ROM ending at
/// 4 GiB; with `--firmware-vars`, the code as read-only flash at the top and the variable
/// store (writable, backed by its file) right below it, as QEMU maps pflash units 0 and 1.
pub fn load_units(spec: &VmSpec) -> Result<Vec<FirmwareUnit>> {
    let Some(code_path) = &spec.firmware else {
        return Ok(Vec::new());
    };
    let code = read_file("firmware", code_path)?;
    let code_what = if spec.firmware_vars.is_some() {
        "--firmware-code"
    } else {
        "--firmware"
    };
    check_image(code_what, code_path, code.len() as u64, Some(&code))?;
    let vars_len = match &spec.firmware_vars {
        Some(p) => {
            let len = std::fs::metadata(p)
                .map_err(|source| VmmError::ReadFile {
                    what: "firmware variable store",
                    path: p.clone(),
                    source,
                })?
                .len();
            check_image("--firmware-vars", p, len, None)?;
            len
        }
        None => 0,
    };
    let total = code.len() as u64 + vars_len;
    if total > MAX_FIRMWARE_BYTES {
        return Err(VmmError::Input(format!(
            "firmware images total {total} bytes, more than the {} MiB that fit below 4 GiB",
            MAX_FIRMWARE_BYTES >> 20
        )));
    }
    let code_gpa = (1u64 << 32) - code.len() as u64;
    let code_mem = map_region(code_what, code_gpa, &code)?;
    let mut units = Vec::new();
    let code_kind = if spec.firmware_vars.is_some() {
        let array = RegionArray {
            mem: code_mem.clone(),
            base: code_gpa,
            len: code.len(),
        };
        let f = Pflash::with_array(Box::new(array), true)
            .map_err(|e| VmmError::Input(format!("{code_what}: {e}")))?;
        UnitKind::Flash(Box::new(f))
    } else {
        UnitKind::Rom
    };
    units.push(FirmwareUnit {
        what: if spec.firmware_vars.is_some() {
            "firmware code"
        } else {
            "firmware"
        },
        gpa: code_gpa,
        len: code.len() as u64,
        mem: code_mem,
        slot: FLASH_SLOT_BASE,
        kind: code_kind,
        vm: None,
        mapped: false,
    });
    if let Some(vars_path) = &spec.firmware_vars {
        let gpa = code_gpa - vars_len;
        let mut mapped = None;
        let pflash = Pflash::open_with(vars_path, false, |data| {
            let mem = map_region("--firmware-vars", gpa, &data).map_err(|e| e.to_string())?;
            mapped = Some(mem.clone());
            Ok(Box::new(RegionArray {
                mem,
                base: gpa,
                len: data.len(),
            }) as Box<dyn FlashArray>)
        })
        .map_err(|e| VmmError::Input(format!("--firmware-vars: {e}")))?;
        let mem = mapped.ok_or_else(|| VmmError::Memory("--firmware-vars: not mapped".into()))?;
        units.push(FirmwareUnit {
            what: "firmware variables",
            gpa,
            len: vars_len,
            mem,
            slot: FLASH_SLOT_BASE + 1,
            kind: UnitKind::Flash(Box::new(pflash)),
            vm: None,
            mapped: false,
        });
    }
    for u in &units {
        tracing::info!(
            unit = u.what,
            gpa = format!("{:#x}", u.gpa),
            bytes = u.len,
            flash = matches!(u.kind, UnitKind::Flash(_)),
            "firmware mapped"
        );
    }
    Ok(units)
}

impl FirmwareUnit {
    /// Guest-physical base.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never true (images are at least one sector).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn region(&self, on: bool) -> Result<kvm_userspace_memory_region> {
        let host = self
            .mem
            .iter()
            .next()
            .ok_or_else(|| VmmError::Memory(format!("{}: no mapping", self.what)))?
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| VmmError::Memory(format!("{}: {e}", self.what)))?;
        Ok(kvm_userspace_memory_region {
            slot: self.slot,
            flags: KVM_MEM_READONLY,
            guest_phys_addr: self.gpa,
            memory_size: if on { self.len } else { 0 },
            userspace_addr: host as u64,
        })
    }

    /// Maps the unit into the guest as read-only memory (KVM_CAP_READONLY_MEM is required).
    pub fn map(&mut self, vm: &VmFd) -> Result<()> {
        let r = self.region(true)?;
        // SAFETY: the mapping is owned by `self.mem`, which the unit keeps for as long as the
        // VM exists (the unit lives on the VM's MMIO bus); the slot is the unit's own and does
        // not overlap guest RAM, which ends below the firmware.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_call("KVM_SET_USER_MEMORY_REGION"))?;
        self.mapped = true;
        Ok(())
    }

    /// Hands the unit the VM, so a flash can remove and restore its memslot at run time.
    pub fn attach(&mut self, vm: Arc<VmFd>) {
        self.vm = Some(vm);
    }

    fn set_mapped(&mut self, on: bool) {
        if self.mapped == on {
            return;
        }
        let Some(vm) = self.vm.clone() else { return };
        let result = self.region(on).and_then(|r| {
            // SAFETY: as in `map`: the same slot, mapping and range, added or deleted.
            unsafe { vm.set_user_memory_region(r) }.map_err(kvm_call("KVM_SET_USER_MEMORY_REGION"))
        });
        match result {
            Ok(()) => self.mapped = on,
            Err(e) => tracing::error!(unit = self.what, "flash memslot toggle: {e}"),
        }
    }

    /// Writes the variable store to stable storage (at VM stop).
    pub fn sync(&self) {
        if let UnitKind::Flash(f) = &self.kind {
            if let Err(e) = f.sync() {
                tracing::warn!(unit = self.what, "flash sync: {e}");
            }
        }
    }
}

impl MmioDevice for FirmwareUnit {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match &mut self.kind {
            UnitKind::Flash(f) => f.read(offset, data),
            // A ROM is always mapped; a read that still exits gets the contents.
            UnitKind::Rom => {
                if self
                    .mem
                    .read_slice(data, GuestAddress(self.gpa + offset))
                    .is_err()
                {
                    data.fill(0xff);
                }
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let UnitKind::Flash(f) = &mut self.kind else {
            tracing::trace!(offset, "write to firmware ROM dropped");
            return;
        };
        f.write(offset, data);
        let array = f.read_array_mode();
        self.set_mapped(array);
    }
}

/// What fw_cfg publishes for a firmware boot.
pub struct FwCfgInputs<'a> {
    pub spec: &'a VmSpec,
    pub acpi: AcpiTables,
    pub mem: Arc<GuestMem>,
    pub timeline: &'a Timeline,
    /// The kernel's setup header stays byte-identical to the file (a measured boot: the
    /// firmware checks it against the launch's hashes table), as QEMU does for SEV.
    pub pristine_kernel: bool,
}

/// The fw_cfg phases worth a timeline mark: the firmware's first fw_cfg access, its memory
/// map, ACPI and kernel reads.
const FW_CFG_PHASES: &[(&str, &str)] = &[
    ("signature", "fw_cfg_first_access"),
    (E820_FILE, "fw_cfg_e820"),
    (devices::firmware::acpi::TABLE_LOADER_FILE, "fw_cfg_acpi"),
    ("setup", "fw_cfg_kernel"),
    ("initrd", "fw_cfg_initrd"),
];

/// The files QEMU's q35 adds for a machine with no boot devices, as cvmm's platform fills
/// them:
///
/// - `bootorder`, empty (QEMU lists it with size 0 when no device has a `bootindex`; OVMF's
///   QemuBootOrderLib then leaves its own `BootOrder` alone; the kernel comes from fw_cfg);
/// - `etc/boot-fail-wait`, -1 ("never reboot after a failed boot", QEMU's default without
///   `-boot reboot-timeout`; SeaBIOS reads it, OVMF does not);
/// - `etc/system-states` with S3 and S4 unavailable, as QEMU encodes it with ICH9-LPC's
///   `disable_s3=1,disable_s4=1`: cvmm offers neither state (its DSDT has only `_S5_` and
///   the PM block ignores other sleep types), and OVMF turns its S3 resume support
///   (`QemuFwCfgS3Enabled`: byte 3, bit 7) on only when S3 is announced. QEMU's defaults
///   announce both, because it implements them.
pub fn platform_files() -> [(&'static str, Vec<u8>); 3] {
    [
        (BOOTORDER_FILE, bootorder_file(&[])),
        (BOOT_FAIL_WAIT_FILE, boot_fail_wait_file(None)),
        (SYSTEM_STATES_FILE, system_states_file(false, false)),
    ]
}

/// Builds the fw_cfg device of a firmware boot.
pub fn fw_cfg(inputs: FwCfgInputs) -> Result<FwCfg> {
    let FwCfgInputs {
        spec,
        acpi,
        mem,
        timeline,
        pristine_kernel,
    } = inputs;
    let fwerr = |e: devices::firmware::FwCfgError| VmmError::Input(format!("fw_cfg: {e}"));
    let mut fw = FwCfg::new().with_dma(mem);
    let cpus = u16::try_from(spec.vcpus)
        .map_err(|_| VmmError::Input(format!("--smp {}: too many for fw_cfg", spec.vcpus)))?;
    fw.set_u16(keys::NB_CPUS, cpus).map_err(fwerr)?;
    fw.set_u16(keys::MAX_CPUS, cpus).map_err(fwerr)?;
    fw.set_u64(keys::RAM_SIZE, spec.memory_mib << 20)
        .map_err(fwerr)?;
    fw.set_u16(keys::NOGRAPHIC, 1).map_err(fwerr)?;
    fw.add_file(E820_FILE, e820_file(&e820(spec.memory_mib)))
        .map_err(fwerr)?;
    for (name, data) in platform_files() {
        fw.add_file(name, data).map_err(fwerr)?;
    }
    acpi.build()
        .map_err(|e| VmmError::Input(format!("ACPI tables: {e}")))?
        .install(&mut fw)
        .map_err(fwerr)?;
    for (name, value) in &spec.fw_cfg {
        fw.add_file(name, devices::firmware::files::string_file(value))
            .map_err(|e| VmmError::Input(format!("--fw-cfg {name}: {e}")))?;
    }
    if let Some(kernel) = &spec.kernel {
        let initrd = match &spec.initrd {
            Some(p) => Some(read_file("initrd", p)?),
            None => None,
        };
        let layout = fw
            .add_linux_boot(LinuxBoot {
                kernel: read_file("kernel", kernel)?,
                initrd,
                cmdline: spec.cmdline.clone(),
                below_4g_mem: low_ram_bytes(spec.memory_mib),
                pristine_setup: pristine_kernel,
            })
            .map_err(|e| {
                VmmError::Input(format!(
                    "--kernel '{}': {e} (firmware boot passes a bzImage through fw_cfg)",
                    kernel.display()
                ))
            })?;
        tracing::info!(
            protocol = format!("{:#x}", layout.protocol),
            kernel = layout.kernel_size,
            setup = layout.setup_size,
            initrd = layout.initrd_size,
            "kernel handed to the firmware through fw_cfg"
        );
    } else if spec.initrd.is_some() {
        return Err(VmmError::Input("--initrd needs --kernel".into()));
    } else if !spec.cmdline.is_empty() {
        return Err(VmmError::Input(
            "--append needs --kernel: with firmware, the command line goes with the kernel".into(),
        ));
    }
    let tl = timeline.clone();
    fw.set_select_observer(Box::new(move |name| {
        if let Some((_, phase)) = FW_CFG_PHASES.iter().find(|(n, _)| *n == name) {
            tl.mark(phase);
        }
    }));
    Ok(fw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_ram_follows_qemu_q35() {
        assert_eq!(low_ram_bytes(512), 512 << 20);
        assert_eq!(low_ram_bytes(2816 - 1), (2816 - 1) << 20);
        assert_eq!(low_ram_bytes(2816), 0x8000_0000); // 0xB0000000 = 2816 MiB
        assert_eq!(low_ram_bytes(8192), 0x8000_0000);
        let m = e820(4096);
        assert_eq!(
            m[0],
            E820Entry {
                addr: 0,
                size: 0x8000_0000,
                kind: E820_RAM
            }
        );
        assert_eq!(
            m[1],
            E820Entry {
                addr: HIGH_RAM_START,
                size: (4096 << 20) - 0x8000_0000,
                kind: E820_RAM
            }
        );
        assert_eq!(m[2].kind, E820_RESERVED);
        assert!(m[2].addr as usize + m[2].size as usize > FW_TSS_ADDR + 3 * 4096 - 1);
    }

    #[test]
    fn the_64_bit_window_starts_above_ram_and_ends_at_the_address_width() {
        assert_eq!(
            mmio64_window(512, 40),
            Some((HIGH_RAM_START, (1 << 40) - HIGH_RAM_START))
        );
        // 6 GiB: 2 GiB low, 4 GiB from 4 GiB to 8 GiB, window from 8 GiB.
        assert_eq!(mmio64_window(6144, 48).unwrap().0, 8 << 30);
        // OVMF's classic [32 GiB, 64 GiB) and its top-of-space [2^40 - 2^37, 2^40) both fit.
        let (s, len) = mmio64_window(512, 40).unwrap();
        for (a, b) in [(32u64 << 30, 64u64 << 30), ((1 << 40) - (1 << 37), 1 << 40)] {
            assert!(a >= s && b <= s + len);
        }
        assert_eq!(
            mmio64_window(1 << 20, 36),
            None,
            "1 TiB of RAM leaves no room below 2^36"
        );
    }

    /// Reads item `key` the way firmware does over the I/O interface: selector at 0x510
    /// (16-bit), then `len` bytes from the data port 0x511.
    fn read_item(fw: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        use devices::bus::PioDevice;
        fw.write(0, &key.to_le_bytes());
        (0..len)
            .map(|_| {
                let mut b = [0u8];
                fw.read(1, &mut b);
                b[0]
            })
            .collect()
    }

    /// The file directory as the guest reads it: (name, key, size).
    fn directory(fw: &mut FwCfg) -> Vec<(String, u16, usize)> {
        let count = u32::from_be_bytes(read_item(fw, keys::FILE_DIR, 4).try_into().unwrap());
        let dir = read_item(fw, keys::FILE_DIR, 4 + 64 * count as usize);
        dir[4..]
            .chunks(64)
            .map(|e| {
                let size = u32::from_be_bytes(e[0..4].try_into().unwrap()) as usize;
                let key = u16::from_be_bytes([e[4], e[5]]);
                let name = e[8..].split(|&b| b == 0).next().unwrap();
                (String::from_utf8(name.to_vec()).unwrap(), key, size)
            })
            .collect()
    }

    fn vm_fw_cfg(spec: &VmSpec) -> FwCfg {
        let acpi = crate::acpi::firmware_tables(spec.vcpus, &crate::acpi::AcpiPlatform::q35(None));
        fw_cfg(FwCfgInputs {
            spec,
            acpi,
            mem: Arc::new(crate::memory::create(16).unwrap()),
            timeline: &Timeline::new(),
            pristine_kernel: false,
        })
        .unwrap()
    }

    /// The guest's view of one named file: its directory size and the bytes behind its key.
    fn file_as_read(fw: &mut FwCfg, name: &str) -> Option<Vec<u8>> {
        let (_, key, size) = directory(fw).into_iter().find(|(n, _, _)| n == name)?;
        Some(read_item(fw, key, size))
    }

    #[test]
    fn the_directory_lists_qemus_platform_files_with_their_contents() {
        let spec = VmSpec {
            vcpus: 2,
            memory_mib: 256,
            ..Default::default()
        };
        let mut fw = vm_fw_cfg(&spec);
        let names: Vec<String> = directory(&mut fw).into_iter().map(|e| e.0).collect();
        for want in ["bootorder", "etc/boot-fail-wait", "etc/system-states"] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        // No boot devices: an empty bootorder, as QEMU lists it (OVMF keeps its BootOrder).
        assert_eq!(file_as_read(&mut fw, "bootorder").unwrap(), b"");
        // -1: never reboot after a failed boot.
        assert_eq!(
            file_as_read(&mut fw, "etc/boot-fail-wait").unwrap(),
            [0xff, 0xff, 0xff, 0xff]
        );
        // S0 and S5 available, S3 (type 1) and S4 (type 2) listed but not available: OVMF's
        // QemuFwCfgS3Enabled reads byte 3 bit 7 and must see it clear.
        let states = file_as_read(&mut fw, "etc/system-states").unwrap();
        assert_eq!(states, [0x80, 0, 0, 0x01, 0x02, 0x80]);
        assert_eq!(states[3] & 0x80, 0, "S3 not announced");
        // Directory sizes match what is read, and the files sit beside the e820 map and ACPI.
        for want in ["etc/e820", "etc/acpi/tables", "etc/table-loader"] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "directory in name order, as QEMU's");
    }

    #[test]
    fn an_opt_string_from_the_spec_reaches_the_directory_with_its_bytes() {
        let spec = VmSpec {
            fw_cfg: vec![
                ("opt/ovmf/X-PciMmio64Mb".into(), "65536".into()),
                ("opt/org.cvmm/greeting".into(), "héllo".into()),
            ],
            ..Default::default()
        };
        let mut fw = vm_fw_cfg(&spec);
        assert_eq!(
            file_as_read(&mut fw, "opt/ovmf/X-PciMmio64Mb").unwrap(),
            b"65536",
            "the string's bytes, no NUL, as QEMU's -fw_cfg string="
        );
        assert_eq!(
            file_as_read(&mut fw, "opt/org.cvmm/greeting").unwrap(),
            "héllo".as_bytes()
        );
        // A name that collides with a platform file is refused, naming the flag and file.
        let clash = VmSpec {
            fw_cfg: vec![("etc/system-states".into(), "x".into())],
            ..Default::default()
        };
        let acpi = crate::acpi::firmware_tables(1, &crate::acpi::AcpiPlatform::q35(None));
        let e = fw_cfg(FwCfgInputs {
            spec: &clash,
            acpi,
            mem: Arc::new(crate::memory::create(16).unwrap()),
            timeline: &Timeline::new(),
            pristine_kernel: false,
        })
        .err()
        .expect("duplicate file")
        .to_string();
        assert!(e.contains("--fw-cfg etc/system-states"), "{e}");
    }

    fn scratch(name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("cvmm-fw-{}-{name}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        p
    }

    fn volume(len: usize) -> Vec<u8> {
        let mut v = vec![0xffu8; len];
        v[FV_SIGNATURE_OFFSET..FV_SIGNATURE_OFFSET + 4].copy_from_slice(FV_SIGNATURE);
        v
    }

    #[test]
    fn units_are_placed_below_4_gib_code_on_top() {
        let code = scratch("code", &volume(0x3000));
        let vars = scratch("vars", &[0xff; 0x2000]);
        let spec = VmSpec {
            firmware: Some(code.clone()),
            firmware_vars: Some(vars.clone()),
            ..Default::default()
        };
        let units = load_units(&spec).unwrap();
        assert_eq!(units.len(), 2);
        assert_eq!((units[0].gpa(), units[0].len()), (0xffff_d000, 0x3000));
        assert_eq!((units[1].gpa(), units[1].len()), (0xffff_b000, 0x2000));
        let rom = VmSpec {
            firmware: Some(code.clone()),
            ..Default::default()
        };
        let units = load_units(&rom).unwrap();
        assert_eq!(units.len(), 1);
        assert!(matches!(units[0].kind, UnitKind::Rom));
        for p in [code, vars] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn bad_images_are_refused_naming_the_flag_and_file() {
        let odd = scratch("odd", &[0; 1000]);
        let plain = scratch("plain", &[0; 4096]);
        let big = scratch("big", &volume(9 << 20));
        for (spec, want) in [
            (
                VmSpec {
                    firmware: Some(odd.clone()),
                    ..Default::default()
                },
                "not a non-zero multiple of 4 KiB",
            ),
            (
                VmSpec {
                    firmware: Some(plain.clone()),
                    ..Default::default()
                },
                "not a UEFI firmware image",
            ),
            (
                VmSpec {
                    firmware: Some(big.clone()),
                    ..Default::default()
                },
                "fit below 4 GiB",
            ),
            (
                VmSpec {
                    firmware: Some("/nonexistent/OVMF.fd".into()),
                    ..Default::default()
                },
                "/nonexistent/OVMF.fd",
            ),
        ] {
            let e = load_units(&spec).err().expect(want).to_string();
            assert!(e.contains(want), "{e}");
        }
        let e = load_units(&VmSpec {
            firmware: Some(big.clone()),
            firmware_vars: Some(odd.clone()),
            ..Default::default()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("--firmware-vars") && e.contains("multiple of 4 KiB"),
            "{e}"
        );
        for p in [odd, plain, big] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn flash_units_program_their_memory_and_the_vars_file() {
        let code = scratch("pcode", &volume(0x2000));
        let vars = scratch("pvars", &[0xff; 0x1000]);
        let spec = VmSpec {
            firmware: Some(code.clone()),
            firmware_vars: Some(vars.clone()),
            ..Default::default()
        };
        let mut units = load_units(&spec).unwrap();
        let (code_u, rest) = units.split_first_mut().unwrap();
        let vars_u = &mut rest[0];
        // Program 'A' at offset 0x10 of the variables: memory and file both change.
        vars_u.write(0x10, &[0x10]);
        vars_u.write(0x10, b"A");
        vars_u.write(0x10, &[0xff]);
        let mut b = [0u8; 1];
        vars_u
            .mem
            .read_slice(&mut b, GuestAddress(vars_u.gpa() + 0x10))
            .unwrap();
        assert_eq!(b[0], b'A');
        vars_u.sync();
        assert_eq!(std::fs::read(&vars).unwrap()[0x10], b'A');
        // The code unit is read-only flash: the program fails with the status bit.
        code_u.write(0x20, &[0x10]);
        code_u.write(0x20, &[0x00]);
        code_u.read(0x20, &mut b);
        assert_ne!(b[0] & 0x10, 0, "program error in status");
        code_u.write(0x20, &[0xff]);
        code_u.read(0x20, &mut b);
        assert_eq!(b[0], 0xff, "code unchanged");
        for p in [code, vars] {
            let _ = std::fs::remove_file(p);
        }
    }
}
