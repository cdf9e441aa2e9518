use super::*;
use crate::firmware::files::*;
use crate::firmware::fw_cfg::FwCfgError;

#[test]
fn signature_id_and_dma_signature_through_ports() {
    let fw = Firmware::new(FwCfg::new(), guest_mem());
    assert_eq!(fw.read_item(keys::SIGNATURE, 4), b"QEMU");
    assert_eq!(fw.read_item(keys::ID, 4), 1u32.to_le_bytes());
    let fw = Firmware::with_dma(FwCfg::new());
    assert_eq!(fw.read_item(keys::ID, 4), 3u32.to_le_bytes());
    let (mut hi, mut lo) = ([0u8; 4], [0u8; 4]);
    fw.bus.pio_read(0x514, &mut hi);
    fw.bus.pio_read(0x518, &mut lo);
    assert_eq!([hi, lo].concat(), b"QEMU CFG");
}

#[test]
fn directory_lists_files_in_name_order_with_their_keys() {
    let mut dev = FwCfg::new();
    dev.add_file("opt/org.cvmm/x", string_file("262144"))
        .unwrap();
    dev.add_file(E820_FILE, vec![7; 40]).unwrap();
    dev.add_file(BOOTORDER_FILE, bootorder_file(&["/a", "/b"]))
        .unwrap();
    let keys_before: Vec<_> = ["bootorder", "etc/e820", "opt/org.cvmm/x"]
        .iter()
        .map(|n| dev.file_key(n).unwrap())
        .collect();
    let fw = Firmware::new(dev, guest_mem());
    let dir = fw.directory();
    let names: Vec<_> = dir.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(names, ["bootorder", "etc/e820", "opt/org.cvmm/x"]);
    let keys: Vec<_> = dir.iter().map(|d| d.1).collect();
    assert_eq!(keys, [0x20, 0x21, 0x22]);
    assert_eq!(keys, keys_before);
    assert_eq!(dir[0].2, 6);
    assert_eq!(fw.read_item(0x20, 6), b"/a\n/b\0");
    assert_eq!(fw.read_item(0x21, 40), vec![7; 40]);
    assert_eq!(fw.read_item(0x22, 6), b"262144");
}

#[test]
fn missing_items_and_reads_past_the_end_give_zeros() {
    let mut dev = FwCfg::new();
    dev.set_u16(keys::NB_CPUS, 0x0102).unwrap();
    let fw = Firmware::new(dev, guest_mem());
    assert_eq!(fw.read_item(keys::NB_CPUS, 5), [2, 1, 0, 0, 0]);
    assert_eq!(fw.read_item(0x1234, 3), [0, 0, 0]);
    assert_eq!(fw.read_item(0x20, 3), [0, 0, 0]); // no files
    assert_eq!(fw.read_item(0xffff, 2), [0, 0]);
    // The write-channel bit does not change which item is read.
    assert_eq!(fw.read_item(0x4000 | keys::SIGNATURE, 4), b"QEMU");
    // Reselecting restarts at offset 0.
    fw.select(keys::NB_CPUS);
    assert_eq!(fw.read(1), [2]);
    fw.select(keys::NB_CPUS);
    assert_eq!(fw.read(2), [2, 1]);
}

#[test]
fn multi_byte_data_reads_and_odd_writes() {
    let mut dev = FwCfg::new();
    dev.add_file("opt/s", b"abcdef".to_vec()).unwrap();
    let fw = Firmware::new(dev, guest_mem());
    fw.select(0x20);
    let mut four = [0u8; 4];
    fw.bus.pio_read(0x511, &mut four);
    assert_eq!(&four, b"abcd");
    // Data-port writes and 1-byte selector writes are ignored.
    fw.bus.pio_write(0x511, &[0x55]);
    fw.bus.pio_write(0x510, &[0x00]);
    assert_eq!(fw.read(3), [b'e', b'f', 0]);
    // Ports 0x512/0x513 are part of the range and read zero.
    let mut b = [0xaau8; 2];
    fw.bus.pio_read(0x512, &mut b);
    assert_eq!(b, [0, 0]);
}

#[test]
fn dma_select_read_skip_and_zero_fill() {
    let mut dev = FwCfg::new();
    dev.add_file("etc/x", (1..=10).collect()).unwrap();
    let fw = Firmware::with_dma(dev);
    fw.mem
        .write_slice(&[0xaa; 32], GuestAddress(0x2000))
        .unwrap();
    let sel = (0x20u32 << 16) | dma_ctl::SELECT;
    // Skip 3, then read 4: bytes 4..=7.
    assert_eq!(fw.dma(0x1000, sel | dma_ctl::SKIP, 3, 0), 0);
    assert_eq!(fw.dma(0x1000, dma_ctl::READ, 4, 0x2000), 0);
    let mut got = [0u8; 4];
    fw.mem.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
    assert_eq!(got, [4, 5, 6, 7]);
    // Reading 8 more: the last 3 bytes, then zeros; memory after the request is untouched.
    assert_eq!(fw.dma(0x1000, dma_ctl::READ, 8, 0x2000), 0);
    let mut got = [0u8; 9];
    fw.mem.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
    assert_eq!(got, [8, 9, 10, 0, 0, 0, 0, 0, 0xaa]);
    // The port interface continues where DMA left off (at the end: zeros).
    assert_eq!(fw.read(1), [0]);
    // Select-only requests succeed and reset the offset.
    assert_eq!(fw.dma(0x1000, sel, 0, 0), 0);
    assert_eq!(fw.read(2), [1, 2]);
}

#[test]
fn dma_writes_are_refused() {
    let mut dev = FwCfg::new();
    dev.add_file("etc/x", vec![1, 2, 3]).unwrap();
    let fw = Firmware::with_dma(dev);
    fw.mem
        .write_slice(&[9, 9, 9], GuestAddress(0x2000))
        .unwrap();
    let ctl = (0x20u32 << 16) | dma_ctl::SELECT | dma_ctl::WRITE;
    assert_eq!(fw.dma(0x1000, ctl, 3, 0x2000), dma_ctl::ERROR);
    assert_eq!(fw.read_item(0x20, 3), [1, 2, 3]);
}

#[test]
fn hostile_dma_sets_the_error_bit_and_never_panics() {
    let mut dev = FwCfg::new();
    dev.add_file("etc/x", vec![5; 100]).unwrap();
    let fw = Firmware::with_dma(dev);
    let read = (0x20u32 << 16) | dma_ctl::SELECT | dma_ctl::READ;
    // Target outside RAM, straddling its end, wrapping around, and a 4 GiB zero fill.
    assert_eq!(fw.dma(0x1000, read, 16, RAM + 0x1000), dma_ctl::ERROR);
    assert_eq!(fw.dma(0x1000, read, 200, RAM - 50), dma_ctl::ERROR);
    assert_eq!(fw.dma(0x1000, read, 16, u64::MAX - 4), dma_ctl::ERROR);
    assert_eq!(fw.dma(0x1000, read, u32::MAX, 0x3000), dma_ctl::ERROR);
    // Nothing at the selected key: zero fill succeeds.
    let none = (0x7777u32 << 16) | dma_ctl::SELECT | dma_ctl::READ;
    fw.mem
        .write_slice(&[0xaa; 8], GuestAddress(0x2000))
        .unwrap();
    assert_eq!(fw.dma(0x1000, none, 8, 0x2000), 0);
    let mut got = [0xffu8; 8];
    fw.mem.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
    assert_eq!(got, [0; 8]);
    // An access structure outside RAM (and one straddling its end) is dropped.
    fw.kick(RAM + 0x10);
    fw.kick(RAM - 8);
    fw.kick(u64::MAX);
    // The device still works.
    assert_eq!(fw.read_item(keys::SIGNATURE, 4), b"QEMU");
}

#[test]
fn dma_without_memory_is_ignored() {
    let fw = Firmware::new(FwCfg::new(), guest_mem());
    let ctl = dma_ctl::SELECT | dma_ctl::READ; // key 0: signature
    assert_eq!(fw.dma(0x1000, ctl, 4, 0x2000), ctl);
    let mut got = [0u8; 4];
    fw.mem.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
    assert_eq!(got, [0; 4]);
}

#[test]
fn configuration_errors() {
    let mut dev = FwCfg::new();
    for key in [
        keys::SIGNATURE,
        keys::ID,
        keys::FILE_DIR,
        0x20,
        0x3fff,
        0x4005,
    ] {
        assert_eq!(
            dev.set_item(key, vec![1]),
            Err(FwCfgError::ReservedKey(key))
        );
    }
    assert!(dev.set_item(0x8003, vec![1]).is_ok());
    let long = "x".repeat(56);
    for bad in ["", long.as_str(), "a\0b"] {
        assert!(matches!(
            dev.add_file(bad, vec![]),
            Err(FwCfgError::InvalidFileName(_))
        ));
    }
    assert!(dev.add_file(&"y".repeat(55), vec![]).is_ok());
    dev.add_file("etc/a", vec![]).unwrap();
    assert_eq!(
        dev.add_file("etc/a", vec![]),
        Err(FwCfgError::DuplicateFile("etc/a".into()))
    );
}

#[test]
fn e820_and_small_file_encodings() {
    let e = E820Entry {
        addr: 0x1122_3344_5566_7788,
        size: 0x0102_0304_0506_0708,
        kind: E820_RESERVED,
    };
    let b = e.to_bytes();
    assert_eq!(&b[0..8], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&b[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(&b[16..20], &2u32.to_le_bytes());
    assert_eq!(E820Entry::from_bytes(&b), e);
    let ram = E820Entry {
        addr: 0,
        size: 0x8000_0000,
        kind: E820_RAM,
    };
    let file = e820_file(&[ram, e]);
    assert_eq!(file.len(), 40);
    assert_eq!(&file[20..], &b);
    assert_eq!(bootorder_file(&[]), Vec::<u8>::new());
    assert_eq!(bootorder_file(&["/x"]), b"/x\0");
    assert_eq!(boot_fail_wait_file(None), [0xff; 4]);
    assert_eq!(boot_fail_wait_file(Some(5)), [5, 0, 0, 0]);
    assert_eq!(system_states_file(false, false), [0x80, 0, 0, 1, 2, 0x80]);
    assert_eq!(
        system_states_file(true, true),
        [0x80, 0, 0, 0x81, 0x82, 0x80]
    );
}

#[test]
fn the_observer_hears_each_item_once_by_name() {
    use std::sync::{Arc, Mutex};
    let heard = Arc::new(Mutex::new(Vec::<String>::new()));
    let h2 = heard.clone();
    let mut dev = FwCfg::new();
    dev.add_file(E820_FILE, vec![0; 20]).unwrap();
    dev.set_item(keys::KERNEL_DATA, vec![1, 2, 3]).unwrap();
    dev.set_select_observer(Box::new(move |n| h2.lock().unwrap().push(n.to_string())));
    dev.reset(); // the host's reset is not a guest selection
    let fw = Firmware::new(dev, guest_mem());
    fw.select(keys::SIGNATURE);
    fw.select(keys::SIGNATURE);
    fw.select(0x4000 | keys::SIGNATURE);
    fw.select(0x20);
    fw.select(keys::KERNEL_DATA);
    fw.select(0x0123);
    fw.select(0x20);
    assert_eq!(
        *heard.lock().unwrap(),
        ["signature", "etc/e820", "kernel", "key-0x0123"]
    );
}
