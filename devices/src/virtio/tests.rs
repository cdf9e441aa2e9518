//! Tier-A tests: a test "driver" does what Linux's virtio_pci_modern does, through the
//! configuration ports, ECAM and the BAR window, against a fake device, a recording fake
//! MsiRouter (irqfds the test can read) and a fake IoEventRegistrar.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::transport::*;
use super::*;
use crate::bus::{lock, MmioDevice, PioDevice};
use crate::interrupt::{InterruptError, IoEventRegistrar, MsiRouter, MsiVector};
use crate::pci::{PciBarWindow, PciBus, PciConfigIo, PciConfigMmio, PciWindow};

const W32: PciWindow = PciWindow {
    base: 0xc000_0000,
    size: 0x1000_0000,
};
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const BUF: u64 = 0x5000;
const MSI_ADDR: u64 = 0xfee0_0000;

#[derive(Default)]
struct FakeRouter {
    irqfds: Mutex<Vec<EventFd>>,
    /// Latest route per GSI: (address, data, masked).
    routes: Mutex<BTreeMap<u32, (u64, u32, bool)>>,
}

impl MsiRouter for FakeRouter {
    fn allocate(&self) -> Result<MsiVector, InterruptError> {
        let mut fds = self.irqfds.lock().unwrap();
        let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
        fds.push(irqfd.try_clone().unwrap());
        Ok(MsiVector {
            gsi: 24 + fds.len() as u32 - 1,
            irqfd,
        })
    }
    fn route(&self, gsi: u32, addr: u64, data: u32, masked: bool) -> Result<(), InterruptError> {
        self.routes
            .lock()
            .unwrap()
            .insert(gsi, (addr, data, masked));
        Ok(())
    }
}

impl FakeRouter {
    /// The irqfd of the GSI routed (unmasked) to MSI data `data`.
    fn irqfd_for(&self, data: u32) -> EventFd {
        let routes = self.routes.lock().unwrap();
        let (&gsi, _) = routes
            .iter()
            .find(|(_, r)| *r == &(MSI_ADDR, data, false))
            .expect("vector routed");
        self.irqfds.lock().unwrap()[(gsi - 24) as usize]
            .try_clone()
            .unwrap()
    }
}

#[derive(Default)]
struct FakeIoEvents {
    regs: Mutex<BTreeMap<u64, EventFd>>,
}

impl IoEventRegistrar for FakeIoEvents {
    fn register(&self, evt: &EventFd, addr: u64) -> Result<(), InterruptError> {
        let old = self
            .regs
            .lock()
            .unwrap()
            .insert(addr, evt.try_clone().unwrap());
        assert!(old.is_none(), "double registration at {addr:#x}");
        Ok(())
    }
    fn unregister(&self, _evt: &EventFd, addr: u64) -> Result<(), InterruptError> {
        assert!(
            self.regs.lock().unwrap().remove(&addr).is_some(),
            "unregistering {addr:#x}"
        );
        Ok(())
    }
}

impl FakeIoEvents {
    fn addrs(&self) -> Vec<u64> {
        self.regs.lock().unwrap().keys().copied().collect()
    }
}

#[derive(Default)]
struct FakeState {
    acked: Option<u64>,
    ctx: Option<ActivateContext>,
    resets: u32,
    config: [u8; 8],
}

struct FakeDevice(Arc<Mutex<FakeState>>);

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 64]
    }
    fn features(&self) -> u64 {
        1 << 5 | F_RING_EVENT_IDX
    }
    fn ack_features(&mut self, features: u64) {
        self.0.lock().unwrap().acked = Some(features);
    }
    fn config_size(&self) -> u32 {
        8
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) {
        let o = offset as usize;
        data.copy_from_slice(&self.0.lock().unwrap().config[o..o + data.len()]);
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) {
        let o = offset as usize;
        self.0.lock().unwrap().config[o..o + data.len()].copy_from_slice(data);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.0.lock().unwrap().ctx = Some(ctx);
        Ok(())
    }
    fn reset(&mut self) {
        let mut s = self.0.lock().unwrap();
        s.ctx = None;
        s.resets += 1;
    }
}

fn fired(e: &EventFd) -> bool {
    e.read().is_ok()
}

/// The test driver.
struct Guest {
    io: PciConfigIo,
    ecam: PciConfigMmio,
    win: PciBarWindow,
    router: Arc<FakeRouter>,
    ioev: Arc<FakeIoEvents>,
    state: Arc<Mutex<FakeState>>,
    mem: Arc<GuestMemoryMmap<()>>,
    slot: u8,
    bar0: u64,
    /// virtio cfg_type -> (offset in BAR 0, length).
    caps: BTreeMap<u8, (u64, u32)>,
    notify_mult: u32,
    msix_cap: u16,
    pci_cfg_cap: u16,
}

impl Guest {
    fn new() -> Self {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
        let router = Arc::new(FakeRouter::default());
        let ioev = Arc::new(FakeIoEvents::default());
        let state = Arc::new(Mutex::new(FakeState::default()));
        let dev = VirtioPciDevice::new(
            Box::new(FakeDevice(state.clone())),
            mem.clone(),
            router.clone(),
            ioev.clone(),
        )
        .unwrap();
        let bus = Arc::new(Mutex::new(PciBus::new(W32, None)));
        lock(&bus).add_device(Arc::new(Mutex::new(dev))).unwrap();
        Self {
            io: PciConfigIo::new(bus.clone()),
            ecam: PciConfigMmio::new(bus.clone()),
            win: PciBarWindow::new(bus, W32.base),
            router,
            ioev,
            state,
            mem,
            slot: 0,
            bar0: 0,
            caps: BTreeMap::new(),
            notify_mult: 0,
            msix_cap: 0,
            pci_cfg_cap: 0,
        }
    }

    fn cfg_r(&mut self, reg: u16, len: usize) -> u32 {
        let a = 0x8000_0000u32 | u32::from(self.slot) << 11 | u32::from(reg & 0xfc);
        self.io.write(0, &a.to_le_bytes());
        let mut b = [0u8; 4];
        self.io.read(4 + (reg & 3), &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn cfg_w(&mut self, reg: u16, v: u32, len: usize) {
        let a = 0x8000_0000u32 | u32::from(self.slot) << 11 | u32::from(reg & 0xfc);
        self.io.write(0, &a.to_le_bytes());
        self.io.write(4 + (reg & 3), &v.to_le_bytes()[..len]);
    }

    fn ecam_r8(&mut self, reg: u16) -> u8 {
        let mut b = [0u8; 1];
        self.ecam
            .read(u64::from(self.slot) << 15 | u64::from(reg), &mut b);
        b[0]
    }

    fn ecam_r32(&mut self, reg: u16) -> u32 {
        let mut b = [0u8; 4];
        self.ecam
            .read(u64::from(self.slot) << 15 | u64::from(reg), &mut b);
        u32::from_le_bytes(b)
    }

    fn bar_r(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.win.read(self.bar0 + off - W32.base, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn bar_w(&mut self, off: u64, v: u64, len: usize) {
        self.win
            .write(self.bar0 + off - W32.base, &v.to_le_bytes()[..len]);
    }

    fn common_r(&mut self, off: u64, len: usize) -> u64 {
        let base = self.caps[&1].0;
        self.bar_r(base + off, len)
    }

    fn common_w(&mut self, off: u64, v: u64, len: usize) {
        let base = self.caps[&1].0;
        self.bar_w(base + off, v, len)
    }

    fn status(&mut self) -> u8 {
        self.common_r(0x14, 1) as u8
    }

    /// Enumerate, size BAR 0, walk the capabilities, enable memory decoding.
    fn probe(&mut self) {
        self.slot = (0..32u8)
            .find(|&s| {
                self.slot = s;
                self.cfg_r(0, 2) == 0x1af4
            })
            .expect("virtio device found");
        assert_eq!(self.cfg_r(2, 2), 0x1041, "0x1040 + net");
        assert_eq!(self.cfg_r(8, 4), 0x0200_0001, "class net, revision 1");
        assert_eq!(self.cfg_r(0x2c, 2), 0x1af4);
        assert_eq!(self.cfg_r(0x3d, 1), 0, "no INTx");
        // Size BAR 0 with decoding off, the way Linux does.
        let (lo, hi) = (self.cfg_r(0x10, 4), self.cfg_r(0x14, 4));
        assert_eq!(lo & 0xf, 0x4, "64-bit non-prefetchable memory");
        self.cfg_w(0x10, u32::MAX, 4);
        self.cfg_w(0x14, u32::MAX, 4);
        let size =
            !((u64::from(self.cfg_r(0x14, 4)) << 32 | u64::from(self.cfg_r(0x10, 4))) & !0xf) + 1;
        assert_eq!(size, BAR0_SIZE);
        self.cfg_w(0x10, lo, 4);
        self.cfg_w(0x14, hi, 4);
        self.bar0 = u64::from(hi) << 32 | u64::from(lo & !0xf);
        assert!(self.bar0 >= W32.base && self.bar0 & (BAR0_SIZE - 1) == 0);
        assert!(
            self.ioev.addrs().is_empty(),
            "no doorbells while memory decoding is off"
        );
        // Walk the capability list through ECAM.
        assert_ne!(self.cfg_r(6, 2) & 0x10, 0);
        let mut p = self.ecam_r8(0x34) as u16;
        while p != 0 {
            match self.ecam_r8(p) {
                0x09 => {
                    let ty = self.ecam_r8(p + 3);
                    assert_eq!(self.ecam_r8(p + 4), 0, "BAR 0");
                    let off = u64::from(self.ecam_r32(p + 8));
                    let len = self.ecam_r32(p + 12);
                    self.caps.insert(ty, (off, len));
                    if ty == 2 {
                        self.notify_mult = self.ecam_r32(p + 16);
                    }
                    if ty == 5 {
                        self.pci_cfg_cap = p;
                    }
                }
                0x11 => self.msix_cap = p,
                id => panic!("unexpected capability {id:#x}"),
            }
            p = self.ecam_r8(p + 1) as u16;
        }
        assert_eq!(
            self.caps.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(self.notify_mult, 4);
        assert_eq!(self.caps[&4].1, 8, "device config length");
        assert_eq!(self.cfg_r(self.msix_cap + 2, 2) & 0x7ff, 2, "3 vectors");
        assert_eq!(self.cfg_r(self.msix_cap + 4, 4), MSIX_TABLE_OFFSET as u32);
        assert_eq!(self.cfg_r(self.msix_cap + 8, 4), MSIX_PBA_OFFSET as u32);
        self.cfg_w(4, 0x6, 2); // memory + bus master
    }

    fn doorbell(&self, q: u64) -> u64 {
        self.caps[&2].0 + q * u64::from(self.notify_mult)
    }

    /// Reset and negotiate `features`; returns the status read back.
    fn negotiate(&mut self, features: u64) -> u8 {
        self.common_w(0x14, 0, 1);
        assert_eq!(self.status(), 0);
        self.common_w(0x14, 1, 1);
        self.common_w(0x14, 3, 1);
        self.common_w(0x08, 0, 4);
        self.common_w(0x0c, features & 0xffff_ffff, 4);
        self.common_w(0x08, 1, 4);
        self.common_w(0x0c, features >> 32, 4);
        self.common_w(0x14, 0xb, 1);
        self.status()
    }

    fn device_features(&mut self) -> u64 {
        self.common_w(0x00, 0, 4);
        let lo = self.common_r(0x04, 4);
        self.common_w(0x00, 1, 4);
        lo | self.common_r(0x04, 4) << 32
    }

    /// Programs MSI-X entry `i` with data `0x40 + i`, unmasked, and enables MSI-X.
    fn program_msix(&mut self, entries: u64) {
        for i in 0..entries {
            let e = MSIX_TABLE_OFFSET + 16 * i;
            self.bar_w(e, MSI_ADDR, 8);
            self.bar_w(e + 8, 0x40 + i, 4);
            self.bar_w(e + 12, 0, 4);
        }
        let ctrl = self.cfg_r(self.msix_cap + 2, 2);
        self.cfg_w(self.msix_cap + 2, ctrl | 0x8000, 2);
    }

    /// Configures queue `q` of `size` with the rings at DESC/AVAIL/USED and vector `vector`.
    fn setup_queue(&mut self, q: u64, size: u64, vector: u64) {
        self.setup_queue_at(q, size, vector, [DESC, AVAIL, USED]);
    }

    /// Same with explicit descriptor/driver/device ring addresses, written the way Linux does
    /// (32-bit halves) except the driver ring (one 64-bit write).
    fn setup_queue_at(&mut self, q: u64, size: u64, vector: u64, rings: [u64; 3]) {
        self.common_w(0x16, q, 2);
        self.common_w(0x18, size, 2);
        self.common_w(0x1a, vector, 2);
        self.common_w(0x20, rings[0], 4);
        self.common_w(0x24, rings[0] >> 32, 4);
        self.common_w(0x28, rings[1], 8);
        self.common_w(0x30, rings[2], 4);
        self.common_w(0x34, rings[2] >> 32, 4);
        self.common_w(0x1c, 1, 2);
    }

    /// Full bring-up of queue 0 with MSI-X: entry 0 config, entry 1 queue 0.
    fn bring_up(&mut self) {
        self.probe();
        let f = F_VERSION_1 | F_ACCESS_PLATFORM | 1 << 5;
        assert_eq!(self.negotiate(f), 0xb);
        self.program_msix(3);
        self.common_w(0x10, 0, 2);
        self.setup_queue(0, 16, 1);
        self.common_w(0x14, 0xf, 1);
        assert_eq!(self.status(), 0xf);
    }

    fn ctx_queue_count(&self) -> Option<usize> {
        self.state
            .lock()
            .unwrap()
            .ctx
            .as_ref()
            .map(|c| c.queues.len())
    }
}

#[test]
fn probe_finds_layout_and_registers_doorbells_on_memory_enable() {
    let mut g = Guest::new();
    g.probe();
    assert_eq!(g.caps[&1], (COMMON_CFG_OFFSET, COMMON_CFG_SIZE as u32));
    assert_eq!(g.caps[&3], (ISR_OFFSET, 1));
    assert_eq!(g.caps[&2], (NOTIFY_OFFSET, 8));
    let want: Vec<u64> = (0..2).map(|q| g.bar0 + g.doorbell(q)).collect();
    assert_eq!(g.ioev.addrs(), want);
    // Extended configuration space exists and is empty.
    assert_eq!(g.ecam_r32(0x100), 0);
}

#[test]
fn features_and_status_state_machine() {
    let mut g = Guest::new();
    g.probe();
    let offered = g.device_features();
    assert_eq!(
        offered,
        F_VERSION_1 | F_ACCESS_PLATFORM | 1 << 5 | F_RING_EVENT_IDX
    );
    assert_eq!(
        g.negotiate(1 << 5),
        0x3,
        "FEATURES_OK refused without VERSION_1"
    );
    assert_eq!(
        g.negotiate(F_VERSION_1 | 1 << 6),
        0x3,
        "FEATURES_OK refused for an unoffered bit"
    );
    assert!(g.state.lock().unwrap().acked.is_none());
    assert_eq!(g.negotiate(F_VERSION_1), 0xb);
    assert_eq!(g.state.lock().unwrap().acked, Some(F_VERSION_1));
    // Features are frozen after FEATURES_OK; clearing a status bit is ignored.
    g.common_w(0x08, 0, 4);
    g.common_w(0x0c, 1 << 5, 4);
    assert_eq!(g.common_r(0x0c, 4), 0);
    g.common_w(0x14, 0x1, 1);
    assert_eq!(g.status(), 0xb);
    // Reset clears everything.
    g.common_w(0x14, 0, 1);
    assert_eq!((g.status(), g.common_r(0x0c, 4)), (0, 0));
}

#[test]
fn driver_ok_activates_with_the_programmed_queue_and_notify_reaches_it() {
    let mut g = Guest::new();
    g.bring_up();
    let doorbell = g.bar0 + g.doorbell(0);
    let st = g.state.lock().unwrap();
    let ctx = st.ctx.as_ref().expect("activated");
    assert_eq!(ctx.features, F_VERSION_1 | F_ACCESS_PLATFORM | 1 << 5);
    assert_eq!(ctx.queues.len(), 1, "only the enabled queue");
    let q = &ctx.queues[0];
    assert_eq!((q.index, q.queue.size(), q.queue.ready()), (0, 16, true));
    assert_eq!(
        (
            q.queue.desc_table(),
            q.queue.avail_ring(),
            q.queue.used_ring()
        ),
        (DESC, AVAIL, USED)
    );
    assert!(!q.queue.event_idx_enabled());
    assert!(!fired(&q.notify));
    // A doorbell write that traps to the device signals the queue's eventfd...
    drop(st);
    g.bar_w(g.doorbell(0), 0, 2);
    let st = g.state.lock().unwrap();
    let ctx = st.ctx.as_ref().unwrap();
    assert!(fired(&ctx.queues[0].notify));
    // ...and the registered ioeventfd is that same eventfd.
    g.ioev.regs.lock().unwrap()[&doorbell].write(1).unwrap();
    assert!(fired(&ctx.queues[0].notify));
    assert!(!fired(&ctx.queues[0].notify));
}

#[test]
fn used_buffer_interrupt_masking_and_pending_bits() {
    let mut g = Guest::new();
    g.bring_up();
    // The driver offers one 64-byte buffer.
    g.mem.write_obj(BUF, GuestAddress(DESC)).unwrap();
    g.mem.write_obj(64u32, GuestAddress(DESC + 8)).unwrap();
    g.mem.write_obj(2u16, GuestAddress(DESC + 12)).unwrap(); // device-writable
    g.mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
    g.mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
    let irq = g.router.irqfd_for(0x41);
    let interrupt = {
        let mut st = g.state.lock().unwrap();
        let ctx = st.ctx.as_mut().unwrap();
        let mem = ctx.mem.clone();
        let chain = ctx.queues[0]
            .queue
            .pop_descriptor_chain(mem.as_ref())
            .expect("a chain");
        assert_eq!(chain.head_index(), 0);
        ctx.queues[0].queue.add_used(mem.as_ref(), 0, 64).unwrap();
        ctx.interrupt.clone()
    };
    interrupt.signal_queue(0);
    assert!(fired(&irq), "queue 0's MSI-X vector fired");
    assert_eq!(g.mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 1);
    assert_eq!(g.bar_r(ISR_OFFSET, 1), 1, "ISR queue bit");
    assert_eq!(g.bar_r(ISR_OFFSET, 1), 0, "ISR clears on read");

    // Per-vector mask: the interrupt becomes pending and is delivered on unmask.
    g.bar_w(MSIX_TABLE_OFFSET + 16 + 12, 1, 4);
    assert!(g
        .router
        .routes
        .lock()
        .unwrap()
        .values()
        .any(|r| r.1 == 0x41 && r.2));
    interrupt.signal_queue(0);
    assert!(!fired(&irq));
    assert_eq!(g.bar_r(MSIX_PBA_OFFSET, 8), 0b10);
    g.bar_w(MSIX_TABLE_OFFSET + 16 + 12, 0, 4);
    assert!(fired(&irq), "pending vector delivered on unmask");
    assert_eq!(g.bar_r(MSIX_PBA_OFFSET, 8), 0);

    // Function mask through the capability.
    let ctrl = g.cfg_r(g.msix_cap + 2, 2);
    g.cfg_w(g.msix_cap + 2, ctrl | 0x4000, 2);
    interrupt.signal_queue(0);
    assert!(!fired(&irq));
    assert_eq!(g.bar_r(MSIX_PBA_OFFSET, 4), 0b10);
    g.cfg_w(g.msix_cap + 2, ctrl, 2);
    assert!(fired(&irq));

    // The configuration vector (entry 0) and the generation counter.
    let cfg_irq = g.router.irqfd_for(0x40);
    let gen = g.common_r(0x15, 1);
    interrupt.signal_config();
    assert!(fired(&cfg_irq));
    assert_ne!(g.common_r(0x15, 1), gen);
    // Signals for queues without a vector or out of range fire nothing and do not panic.
    interrupt.signal_queue(1);
    interrupt.signal_queue(500);
    assert!(!fired(&irq) && !fired(&cfg_irq));

    // Reset stops the device.
    g.common_w(0x14, 0, 1);
    assert_eq!(g.state.lock().unwrap().resets, 1);
    assert!(g.ctx_queue_count().is_none());
    g.common_w(0x16, 0, 2);
    assert_eq!(
        (g.common_r(0x1c, 2), g.common_r(0x1a, 2)),
        (0, u64::from(NO_VECTOR))
    );
}

#[test]
fn bar_moves_and_decoding_rewire_doorbells() {
    let mut g = Guest::new();
    g.bring_up();
    let old = g.bar0;
    let new = W32.base + 0x10_0000;
    g.cfg_w(0x10, new as u32, 4);
    assert_eq!(
        g.ioev.addrs(),
        vec![new + NOTIFY_OFFSET, new + NOTIFY_OFFSET + 4]
    );
    let mut b = [0u8; 1];
    g.win.read(old - W32.base + 0x14, &mut b);
    assert_eq!(b[0], 0xff, "old address no longer decoded");
    g.bar0 = new;
    assert_eq!(g.status(), 0xf, "the device answers at the new address");
    g.cfg_w(4, 0x4, 2); // memory decoding off
    assert!(g.ioev.addrs().is_empty());
    assert_eq!(g.status(), 0xff, "nothing decoded");
    g.cfg_w(4, 0x6, 2);
    assert_eq!(g.ioev.addrs().len(), 2);
}

#[test]
fn bad_queue_setups_need_reset_and_do_not_activate() {
    let mut g = Guest::new();
    g.probe();
    g.program_msix(3);
    // DRIVER_OK without FEATURES_OK.
    g.common_w(0x14, 0, 1);
    g.common_w(0x14, 0x3, 1);
    g.common_w(0x14, 0x7, 1);
    assert_eq!(g.status(), 0x7 | STATUS_NEEDS_RESET);
    assert!(g.ctx_queue_count().is_none());
    assert_eq!(g.bar_r(ISR_OFFSET, 1), 2, "configuration change announced");
    let bad: [(&str, u64, [u64; 3]); 5] = [
        ("size above the maximum of 64", 128, [DESC, AVAIL, USED]),
        ("size not a power of two", 24, [DESC, AVAIL, USED]),
        ("absurd size", 0xffff, [DESC, AVAIL, USED]),
        ("used ring outside memory", 16, [DESC, AVAIL, 0xf_fff0]),
        ("misaligned descriptor table", 16, [DESC + 8, AVAIL, USED]),
    ];
    for (what, size, rings) in bad {
        assert_eq!(g.negotiate(F_VERSION_1), 0xb, "{what}");
        g.setup_queue_at(1, size, 2, rings);
        g.common_w(0x14, 0xf, 1);
        assert_eq!(g.status(), 0xf | STATUS_NEEDS_RESET, "{what}");
        assert!(g.ctx_queue_count().is_none(), "{what}");
        // Writing DRIVER_OK again does not retry activation.
        g.common_w(0x14, 0xf, 1);
        assert!(g.ctx_queue_count().is_none(), "{what}");
    }
    // After all that, a clean bring-up still works.
    assert_eq!(g.negotiate(F_VERSION_1), 0xb);
    g.setup_queue(0, 256, 1);
    g.setup_queue(1, 64, 2);
    g.common_w(0x14, 0xf, 1);
    assert_eq!(g.status(), 0xf);
    assert_eq!(g.ctx_queue_count(), Some(2));
}

#[test]
fn hostile_register_accesses_leave_the_device_consistent() {
    let mut g = Guest::new();
    g.probe();
    g.negotiate(F_VERSION_1);
    // queue_select past num_queues: reads zero, writes go nowhere.
    assert_eq!(g.common_r(0x12, 2), 2);
    g.common_w(0x16, 7, 2);
    assert_eq!(g.common_r(0x18, 2), 0);
    g.common_w(0x18, 16, 2);
    g.common_w(0x1a, 0, 2);
    g.common_w(0x1c, 1, 2);
    assert_eq!((g.common_r(0x18, 2), g.common_r(0x1c, 2)), (0, 0));
    // Vectors past the table read back NO_VECTOR.
    g.common_w(0x16, 0, 2);
    g.common_w(0x1a, 3, 2);
    assert_eq!(g.common_r(0x1a, 2), u64::from(NO_VECTOR));
    g.common_w(0x10, 0x1234, 2);
    assert_eq!(g.common_r(0x10, 2), u64::from(NO_VECTOR));
    // Wrong-width writes are ignored; reads of any width work.
    g.common_w(0x18, 32, 4);
    g.common_w(0x18, 32, 1);
    assert_eq!(g.common_r(0x18, 2), 256);
    assert_eq!(g.common_r(0x12, 1), 2);
    // Offsets past BAR 0 or device config, odd sizes, other BARs: no effect, no panic.
    let mut b = [0u8; 4];
    g.win.read(g.bar0 + BAR0_SIZE - 2 - W32.base, &mut b);
    assert_eq!(b, [0xff; 4]);
    g.bar_w(g.caps[&4].0 + 6, 0xffff_ffff, 4);
    assert_eq!(g.state.lock().unwrap().config, [0; 8]);
    g.bar_w(g.caps[&4].0 + 4, 0xaabb_ccdd, 4);
    assert_eq!(g.bar_r(g.caps[&4].0 + 4, 4), 0xaabb_ccdd);
    assert_eq!(g.bar_r(g.caps[&4].0 + 6, 4), 0, "past the device config");
    g.bar_w(g.doorbell(2), 1, 2);
    g.bar_w(g.doorbell(0) + 1, 1, 1);
    g.bar_w(MSIX_TABLE_OFFSET + 3 * 16, 0, 4);
    g.bar_w(MSIX_TABLE_OFFSET + 2, 0, 4);
    g.bar_w(MSIX_TABLE_OFFSET, 0, 3);
    assert_eq!(g.bar_r(MSIX_TABLE_OFFSET + 3 * 16, 4), 0xffff_ffff);
    assert_eq!(
        g.bar_r(MSIX_TABLE_OFFSET + 12, 4),
        1,
        "entry 0 still masked"
    );
    g.bar_w(MSIX_PBA_OFFSET, u64::MAX, 8);
    assert_eq!(g.bar_r(MSIX_PBA_OFFSET, 8), 0, "PBA is read-only");
    for (off, len) in [(0u64, 3usize), (0x14, 0), (0x7fff, 2)] {
        let mut v = vec![0u8; len];
        g.win.write(g.bar0 + off - W32.base, &v);
        g.win.read(g.bar0 + off - W32.base, &mut v);
    }
    assert_eq!(g.status(), 0xb);
}

#[test]
fn pci_cfg_capability_reaches_bar0() {
    let mut g = Guest::new();
    g.probe();
    let c = g.pci_cfg_cap;
    g.cfg_w(c + 4, 0, 1);
    g.cfg_w(c + 8, 0x12, 4); // num_queues
    g.cfg_w(c + 12, 2, 4);
    assert_eq!(g.cfg_r(c + 16, 2), 2);
    g.cfg_w(c + 8, 0x14, 4); // device_status
    g.cfg_w(c + 12, 1, 4);
    g.cfg_w(c + 16, 1, 1);
    assert_eq!(g.status(), 1);
    g.cfg_w(c + 12, 3, 4); // bad length: no access
    g.cfg_w(c + 16, 0, 1);
    assert_eq!(g.status(), 1);
}

#[test]
fn negotiated_event_idx_reaches_the_queues() {
    let mut g = Guest::new();
    g.probe();
    assert_eq!(g.negotiate(F_VERSION_1 | F_RING_EVENT_IDX), 0xb);
    g.setup_queue(1, 64, NO_VECTOR.into());
    g.common_w(0x14, 0xf, 1);
    let st = g.state.lock().unwrap();
    let ctx = st.ctx.as_ref().expect("activated");
    assert_eq!(ctx.queues.len(), 1);
    assert_eq!((ctx.queues[0].index, ctx.queues[0].queue.size()), (1, 64));
    assert!(ctx.queues[0].queue.event_idx_enabled());
    // Queue registers are frozen after DRIVER_OK.
    drop(st);
    g.common_w(0x16, 1, 2);
    g.common_w(0x18, 32, 2);
    assert_eq!(g.common_r(0x18, 2), 64);
}
