use super::*;
use crate::firmware::linux::{LinuxBoot, LinuxBootError, ACPI_DATA_SIZE};

const SETUP_SECTS: u8 = 27;
const SETUP_LEN: usize = (SETUP_SECTS as usize + 1) * 512;

/// A synthetic bzImage: boot protocol `protocol`, distinct bytes everywhere.
fn bzimage(protocol: u16, loadflags: u8, xloadflags: u16, kernel_len: usize) -> Vec<u8> {
    let mut img: Vec<u8> = (0..SETUP_LEN + kernel_len)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    img[0x1f1] = SETUP_SECTS;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&protocol.to_le_bytes());
    img[0x211] = loadflags;
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    img
}

fn boot(kernel: Vec<u8>, initrd: Option<Vec<u8>>, pristine: bool) -> LinuxBoot {
    LinuxBoot {
        kernel,
        initrd,
        cmdline: "console=ttyS0 quiet".into(),
        below_4g_mem: 0xc000_0000, // above the header's initrd_addr_max
        pristine_setup: pristine,
    }
}

#[test]
fn splits_setup_and_kernel_and_patches_the_header_like_qemu() {
    let img = bzimage(0x20f, 0x01, 0, 5000);
    let initrd = vec![0x42u8; 10_000];
    let mut dev = FwCfg::new();
    let l = dev
        .add_linux_boot(boot(img.clone(), Some(initrd.clone()), false))
        .unwrap();
    let fw = Firmware::new(dev, guest_mem());
    let u32_item = |k| u32::from_le_bytes(fw.read_item(k, 4).try_into().unwrap());

    assert_eq!(u32_item(keys::SETUP_ADDR), 0x10000);
    assert_eq!(u32_item(keys::SETUP_SIZE) as usize, SETUP_LEN);
    assert_eq!(u32_item(keys::KERNEL_ADDR), 0x100000);
    assert_eq!(u32_item(keys::KERNEL_SIZE), 5000);
    assert_eq!(fw.read_item(keys::KERNEL_DATA, 5000), img[SETUP_LEN..]);
    assert_eq!(u32_item(keys::CMDLINE_ADDR), 0x20000);
    assert_eq!(u32_item(keys::CMDLINE_SIZE), 20);
    assert_eq!(
        fw.read_item(keys::CMDLINE_DATA, 20),
        b"console=ttyS0 quiet\0"
    );

    // initrd: highest 4 KiB-aligned spot under the header's initrd_addr_max.
    let addr = u32_item(keys::INITRD_ADDR);
    assert_eq!(addr, (0x7fff_ffff - 10_000) & !4095);
    assert_eq!(u32_item(keys::INITRD_SIZE), 10_000);
    assert_eq!(fw.read_item(keys::INITRD_DATA, 10_000), initrd);
    assert_eq!(l.initrd_addr, Some(addr));

    // The setup part is the file's, with exactly QEMU's header fields patched.
    let setup = fw.read_item(keys::SETUP_DATA, SETUP_LEN);
    let mut want = img[..SETUP_LEN].to_vec();
    want[0x210] = 0xb0;
    want[0x211] |= 0x80;
    want[0x218..0x21c].copy_from_slice(&addr.to_le_bytes());
    want[0x21c..0x220].copy_from_slice(&10_000u32.to_le_bytes());
    want[0x224..0x226].copy_from_slice(&0xfe00u16.to_le_bytes());
    want[0x228..0x22c].copy_from_slice(&0x20000u32.to_le_bytes());
    assert_eq!(setup, want);
}

#[test]
fn initrd_limit_follows_low_ram_and_the_above_4g_flag() {
    // XLF_CAN_BE_LOADED_ABOVE_4G lifts the header limit; low RAM minus ACPI space bounds it.
    let mut dev = FwCfg::new();
    let mut b = boot(bzimage(0x20f, 1, 1 << 1, 600), Some(vec![1; 4096]), false);
    b.below_4g_mem = 0xe000_0000;
    let l = dev.add_linux_boot(b).unwrap();
    let top = 0xe000_0000 - ACPI_DATA_SIZE - 1;
    assert_eq!(l.initrd_addr, Some(((top - 4096) as u32) & !4095));

    // Small RAM: the limit is RAM - ACPI data even below the header's initrd_addr_max.
    let mut dev = FwCfg::new();
    let mut b = boot(bzimage(0x20f, 1, 0, 600), Some(vec![1; 4096]), false);
    b.below_4g_mem = 0x0400_0000;
    let l = dev.add_linux_boot(b).unwrap();
    let top = 0x0400_0000 - ACPI_DATA_SIZE - 1;
    assert_eq!(l.initrd_addr, Some(((top - 4096) as u32) & !4095));
    assert!(u64::from(l.initrd_addr.unwrap()) + 4096 <= top);
}

#[test]
fn pristine_setup_leaves_the_file_bytes_alone() {
    let img = bzimage(0x20f, 1, 0, 700);
    let mut dev = FwCfg::new();
    dev.add_linux_boot(boot(img.clone(), Some(vec![3; 100]), true))
        .unwrap();
    let fw = Firmware::new(dev, guest_mem());
    // OVMF serves setup + kernel as one "kernel" file: it must equal the input file.
    let mut whole = fw.read_item(keys::SETUP_DATA, SETUP_LEN);
    whole.extend(fw.read_item(keys::KERNEL_DATA, 700));
    assert_eq!(whole, img);
}

#[test]
fn old_and_low_kernels_use_qemu_addresses() {
    // Protocol 2.01, not loaded high: everything low, legacy command-line magic.
    let img = bzimage(0x201, 0, 0, 600);
    let mut dev = FwCfg::new();
    let l = dev.add_linux_boot(boot(img, None, false)).unwrap();
    assert_eq!(l.setup_addr, 0x90000);
    assert_eq!(l.kernel_addr, 0x10000);
    assert_eq!(l.cmdline_addr, 0x9a000 - 32); // "console=ttyS0 quiet" + 16, rounded down to 16
    let fw = Firmware::new(dev, guest_mem());
    let setup = fw.read_item(keys::SETUP_DATA, SETUP_LEN);
    assert_eq!(&setup[0x20..0x22], &0xa33fu16.to_le_bytes());
    assert_eq!(
        u16::from_le_bytes([setup[0x22], setup[0x23]]),
        (l.cmdline_addr - 0x90000) as u16
    );
    assert_eq!(fw.read_item(keys::INITRD_SIZE, 4), [0; 4]);
    // setup_sects = 0 means 4.
    let mut img = bzimage(0x20f, 1, 0, 4000);
    img[0x1f1] = 0;
    let l = FwCfg::new().add_linux_boot(boot(img, None, false)).unwrap();
    assert_eq!(l.setup_size, 5 * 512);
    assert_eq!(l.kernel_size as usize, SETUP_LEN + 4000 - 5 * 512);
}

#[test]
fn bad_images_are_rejected() {
    let mut dev = FwCfg::new();
    assert_eq!(
        dev.add_linux_boot(boot(vec![0; 100], None, false)),
        Err(LinuxBootError::TooShort(100))
    );
    let mut img = bzimage(0x20f, 1, 0, 600);
    img[0x202] = b'X';
    assert!(matches!(
        dev.add_linux_boot(boot(img, None, false)),
        Err(LinuxBootError::NotBzImage(_))
    ));
    let mut img = bzimage(0x20f, 1, 0, 0);
    img[0x1f1] = 200;
    assert!(matches!(
        dev.add_linux_boot(boot(img, None, false)),
        Err(LinuxBootError::BadSetupSize { .. })
    ));
    let mut b = boot(bzimage(0x20f, 1, 0, 600), Some(vec![0; 0x10_0000]), false);
    b.below_4g_mem = ACPI_DATA_SIZE + 0x8_0000;
    assert!(matches!(
        dev.add_linux_boot(b),
        Err(LinuxBootError::InitrdTooLarge { .. })
    ));
    assert_eq!(
        dev.add_linux_boot(boot(bzimage(0x1ff, 1, 0, 600), Some(vec![1]), false)),
        Err(LinuxBootError::InitrdUnsupported(0x1ff))
    );
    // Nothing was published by the failed attempts.
    assert_eq!(dev.item(keys::KERNEL_SIZE), None);
}
