//! `-kernel/-initrd/-append` for firmware boot: a bzImage split into its real-mode setup and
//! protected-mode kernel and published under the fw_cfg KERNEL/SETUP/INITRD/CMDLINE items the
//! way QEMU's `x86_load_linux` does, so OVMF's QemuKernelLoaderFsDxe (which serves
//! setup + kernel as the "kernel" file) and the legacy Linux loaders find them.

use super::fw_cfg::{keys, FwCfg, FwCfgError};

/// Memory QEMU's pc/q35 machines keep free for ACPI data below the top of low RAM; the initrd
/// is placed under it.
pub const ACPI_DATA_SIZE: u64 = 0x20000 + 0x8000;

const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const MIN_IMAGE: usize = 0x240; // the header fields used below end before this
const LOADED_HIGH: u8 = 0x01;
const CAN_USE_HEAP: u8 = 0x80;
const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// type_of_loader: 0xB (QEMU) in the high nibble, revision 0.
const LOADER_TYPE_QEMU: u8 = 0xb0;

/// Errors in the kernel image or initrd (user input).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinuxBootError {
    /// The image is shorter than a bzImage header.
    #[error("kernel image is {0} bytes, too short for a bzImage header")]
    TooShort(usize),
    /// No "HdrS" magic at 0x202: not a bzImage (multiboot/ELF kernels are not supported here).
    #[error("kernel image has no bzImage header (magic {0:#010x} at 0x202)")]
    NotBzImage(u32),
    /// setup_sects says the setup is larger than the whole image.
    #[error("kernel setup of {setup} bytes exceeds the {image}-byte image")]
    BadSetupSize { setup: usize, image: usize },
    /// The boot protocol is too old for an initrd.
    #[error("kernel boot protocol {0:#x} cannot load an initrd")]
    InitrdUnsupported(u16),
    /// The initrd does not fit below the kernel's initrd limit.
    #[error("initrd of {size} bytes does not fit below {max:#x}")]
    InitrdTooLarge { size: usize, max: u32 },
    /// A fw_cfg item could not be added.
    #[error(transparent)]
    FwCfg(#[from] FwCfgError),
}

/// What the VMM passes for a firmware boot of a Linux bzImage.
pub struct LinuxBoot {
    /// The whole bzImage file.
    pub kernel: Vec<u8>,
    /// The initrd file, if any.
    pub initrd: Option<Vec<u8>>,
    /// The command line (without the NUL).
    pub cmdline: String,
    /// Bytes of RAM below 4 GiB (bounds the initrd address like QEMU's `below_4g_mem_size`).
    pub below_4g_mem: u64,
    /// Leave the setup header byte-identical to the file, as QEMU does for SEV, so launch
    /// measurements of the kernel match the file; false patches it like a plain QEMU boot.
    pub pristine_setup: bool,
}

/// Where the items say the parts go (the same numbers as the *_ADDR items).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxBootLayout {
    pub protocol: u16,
    pub setup_addr: u32,
    pub setup_size: u32,
    pub kernel_addr: u32,
    pub kernel_size: u32,
    pub cmdline_addr: u32,
    pub initrd_addr: Option<u32>,
    pub initrd_size: u32,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

impl FwCfg {
    /// Publishes a bzImage, initrd and command line as QEMU does for `-kernel/-initrd/-append`.
    pub fn add_linux_boot(&mut self, boot: LinuxBoot) -> Result<LinuxBootLayout, LinuxBootError> {
        let LinuxBoot {
            kernel: mut image,
            initrd,
            cmdline,
            below_4g_mem,
            pristine_setup,
        } = boot;
        if image.len() < MIN_IMAGE {
            return Err(LinuxBootError::TooShort(image.len()));
        }
        let magic = le32(&image, 0x202);
        if magic != HDR_MAGIC {
            return Err(LinuxBootError::NotBzImage(magic));
        }
        let protocol = le16(&image, 0x206);
        let loadflags = image[0x211];
        let (real_addr, cmdline_addr, kernel_addr) =
            if protocol < 0x200 || loadflags & LOADED_HIGH == 0 {
                (0x90000u32, 0x9a000 - cmdline_span(&cmdline), 0x10000u32)
            } else if protocol < 0x202 {
                (0x90000, 0x9a000 - cmdline_span(&cmdline), 0x100000)
            } else {
                (0x10000, 0x20000, 0x100000)
            };

        let mut initrd_max =
            if protocol >= 0x20c && le16(&image, 0x236) & XLF_CAN_BE_LOADED_ABOVE_4G != 0 {
                u32::MAX
            } else if protocol >= 0x203 {
                le32(&image, 0x22c)
            } else {
                0x37ff_ffff
            };
        let low_top = below_4g_mem.saturating_sub(ACPI_DATA_SIZE);
        if u64::from(initrd_max) >= low_top {
            initrd_max = low_top.saturating_sub(1) as u32;
        }

        let setup_sects = match image[0x1f1] {
            0 => 4,
            n => usize::from(n),
        };
        let setup_size = (setup_sects + 1) * 512;
        if setup_size > image.len() {
            return Err(LinuxBootError::BadSetupSize {
                setup: setup_size,
                image: image.len(),
            });
        }

        let mut initrd_addr = None;
        let initrd_size = initrd.as_ref().map_or(0, Vec::len);
        if initrd.is_some() {
            if protocol < 0x200 {
                return Err(LinuxBootError::InitrdUnsupported(protocol));
            }
            if initrd_size as u64 >= u64::from(initrd_max) {
                return Err(LinuxBootError::InitrdTooLarge {
                    size: initrd_size,
                    max: initrd_max,
                });
            }
            initrd_addr = Some((initrd_max - initrd_size as u32) & !4095);
        }

        if !pristine_setup {
            if protocol >= 0x202 {
                put32(&mut image, 0x228, cmdline_addr);
            } else {
                put16(&mut image, 0x20, 0xa33f);
                put16(&mut image, 0x22, (cmdline_addr - real_addr) as u16);
            }
            if protocol >= 0x200 {
                image[0x210] = LOADER_TYPE_QEMU;
            }
            if protocol >= 0x201 {
                image[0x211] |= CAN_USE_HEAP;
                put16(&mut image, 0x224, (cmdline_addr - real_addr - 0x200) as u16);
            }
            if let Some(addr) = initrd_addr {
                put32(&mut image, 0x218, addr);
                put32(&mut image, 0x21c, initrd_size as u32);
            }
        }

        let kernel = image.split_off(setup_size);
        let setup = image;
        let layout = LinuxBootLayout {
            protocol,
            setup_addr: real_addr,
            setup_size: setup.len() as u32,
            kernel_addr,
            kernel_size: kernel.len() as u32,
            cmdline_addr,
            initrd_addr,
            initrd_size: initrd_size as u32,
        };
        tracing::debug!(?layout, "fw_cfg linux boot");

        let mut cmd = cmdline.into_bytes();
        cmd.push(0);
        self.set_u32(keys::CMDLINE_ADDR, cmdline_addr)?;
        self.set_u32(keys::CMDLINE_SIZE, cmd.len() as u32)?;
        self.set_item(keys::CMDLINE_DATA, cmd)?;
        if let (Some(addr), Some(data)) = (initrd_addr, initrd) {
            self.set_u32(keys::INITRD_ADDR, addr)?;
            self.set_u32(keys::INITRD_SIZE, initrd_size as u32)?;
            self.set_item(keys::INITRD_DATA, data)?;
        }
        self.set_u32(keys::KERNEL_ADDR, kernel_addr)?;
        self.set_u32(keys::KERNEL_SIZE, layout.kernel_size)?;
        self.set_item(keys::KERNEL_DATA, kernel)?;
        self.set_u32(keys::SETUP_ADDR, real_addr)?;
        self.set_u32(keys::SETUP_SIZE, layout.setup_size)?;
        self.set_item(keys::SETUP_DATA, setup)?;
        Ok(layout)
    }
}

/// QEMU reserves the command line rounded up to 16 bytes (with its NUL) below 0x9a000 for
/// low-loaded kernels.
fn cmdline_span(cmdline: &str) -> u32 {
    ((cmdline.len() + 16) & !15).min(0x9000) as u32
}
