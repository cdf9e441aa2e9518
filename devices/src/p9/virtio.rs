//! virtio-9p: the virtio device (type 9, one request queue, the mount tag in config space)
//! that carries 9P messages between the guest and a [`NinePServer`]. Requests are processed on
//! a worker thread; a malformed descriptor chain is completed with length 0 and skipped.

use super::{NinePConfig, NinePServer, Share};
use crate::virtio::{
    drain_suppressed, ActivateContext, ActivateError, GuestMem, VirtioDevice, VirtioInterrupt,
    F_RING_EVENT_IDX,
};
use crate::worker::{Wake, Worker};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT, Reader, Writer};

/// Virtio device type of 9P transport.
pub const TYPE_9P: u32 = 9;
/// Feature: the config space holds a mount tag.
const VIRTIO_9P_MOUNT_TAG: u64 = 1;
const QUEUE_SIZE: u16 = 128;
/// Longest mount tag accepted.
pub const MAX_TAG_LEN: usize = 255;

/// A read-only virtio-9p device.
pub struct Virtio9p {
    tag: String,
    config: Vec<u8>,
    server: Arc<Mutex<NinePServer>>,
    worker: Option<Worker>,
    queue_sizes: [u16; 1],
}

impl Virtio9p {
    /// A device exporting `share` under `tag`.
    pub fn new(tag: &str, share: Share, config: NinePConfig) -> Result<Self, String> {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            return Err(format!(
                "9p mount tag '{tag}' must be 1 to {MAX_TAG_LEN} bytes"
            ));
        }
        let mut cfg = (tag.len() as u16).to_le_bytes().to_vec();
        cfg.extend_from_slice(tag.as_bytes());
        Ok(Self {
            tag: tag.to_string(),
            config: cfg,
            server: Arc::new(Mutex::new(NinePServer::new(share, config))),
            worker: None,
            queue_sizes: [QUEUE_SIZE],
        })
    }
}

/// Serves every available request on `queue`; returns whether any was completed.
pub fn process_requests(mem: &GuestMem, queue: &mut Queue, server: &Mutex<NinePServer>) -> bool {
    let mut done = false;
    let mut req = Vec::new();
    let mut resp = Vec::new();
    while let Some(chain) = queue.pop_descriptor_chain(mem.as_ref()) {
        let head = chain.head_index();
        let written = serve_one(mem, chain, server, &mut req, &mut resp).unwrap_or_else(|e| {
            tracing::debug!("virtio-9p: bad descriptor chain {head}: {e}");
            0
        });
        if let Err(e) = queue.add_used(mem.as_ref(), head, written) {
            tracing::warn!("virtio-9p: cannot complete descriptor {head}: {e}");
        }
        done = true;
    }
    done
}

fn serve_one(
    mem: &GuestMem,
    chain: virtio_queue::DescriptorChain<&vm_memory::GuestMemoryMmap<()>>,
    server: &Mutex<NinePServer>,
    req: &mut Vec<u8>,
    resp: &mut Vec<u8>,
) -> Result<u32, String> {
    let mut reader = Reader::new(mem.as_ref(), chain.clone()).map_err(|e| e.to_string())?;
    let mut writer = Writer::new(mem.as_ref(), chain).map_err(|e| e.to_string())?;
    let mut srv = crate::bus::lock(server);
    // Never read more than a message may hold (the size field is checked by the server).
    let limit = (srv.msize() as usize).min(reader.available_bytes());
    req.clear();
    req.resize(limit, 0);
    reader.read_exact(req).map_err(|e| e.to_string())?;
    srv.handle(req, resp);
    drop(srv);
    if resp.len() > writer.available_bytes() {
        return Err(format!(
            "reply of {} bytes does not fit the {} writable bytes",
            resp.len(),
            writer.available_bytes()
        ));
    }
    writer.write_all(resp).map_err(|e| e.to_string())?;
    Ok(resp.len() as u32)
}

impl VirtioDevice for Virtio9p {
    fn device_type(&self) -> u32 {
        TYPE_9P
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        VIRTIO_9P_MOUNT_TAG | F_RING_EVENT_IDX
    }

    fn ack_features(&mut self, _features: u64) {}

    fn config_size(&self) -> u32 {
        self.config.len() as u32
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u32, _data: &[u8]) {}

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.reset();
        let mut q = ctx
            .queues
            .into_iter()
            .next()
            .ok_or_else(|| ActivateError::Device("virtio-9p needs its request queue".into()))?;
        let mem = ctx.mem;
        let irq: Arc<dyn VirtioInterrupt> = ctx.interrupt;
        let server = self.server.clone();
        let name = format!("9p-{}", self.tag);
        let worker = Worker::spawn(&name, seccomp::ThreadKind::NineP, move |poll| {
            if let Err(e) = poll.watch(q.notify.as_raw_fd(), 0) {
                tracing::error!("virtio-9p: cannot watch the queue: {e}");
                return;
            }
            loop {
                for wake in poll.wait(-1) {
                    match wake {
                        Wake::Stop => return,
                        Wake::Ready(_) => {
                            let _ = q.notify.read();
                            let served = drain_suppressed(&mem, &mut q.queue, |queue| {
                                process_requests(&mem, queue, &server)
                            });
                            if served && q.queue.needs_notification(mem.as_ref()).unwrap_or(true) {
                                irq.signal_queue(q.index);
                            }
                        }
                    }
                }
            }
        })
        .map_err(|e| ActivateError::Device(format!("virtio-9p worker: {e}")))?;
        self.worker = Some(worker);
        tracing::info!(tag = %self.tag, "virtio-9p activated");
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p9::MemoryShare;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

    fn tversion(msize: u32) -> Vec<u8> {
        let mut m = Vec::new();
        let body_len = 4 + 1 + 2 + 4 + 2 + 8;
        m.extend_from_slice(&(body_len as u32).to_le_bytes());
        m.push(100); // Tversion
        m.extend_from_slice(&0xffffu16.to_le_bytes());
        m.extend_from_slice(&msize.to_le_bytes());
        m.extend_from_slice(&8u16.to_le_bytes());
        m.extend_from_slice(b"9P2000.L");
        m
    }

    fn device() -> Virtio9p {
        let share = MemoryShare::new()
            .with_file("environment", b"A=1\n".to_vec(), 0o644)
            .unwrap();
        Virtio9p::new("env_share", Share::Memory(share), NinePConfig::default()).unwrap()
    }

    #[test]
    fn config_space_holds_the_tag() {
        let d = device();
        assert_eq!(d.config_size(), 2 + 9);
        let mut b = [0u8; 11];
        d.read_config(0, &mut b);
        assert_eq!(&b[..2], &9u16.to_le_bytes());
        assert_eq!(&b[2..], b"env_share");
        let mut past = [0xaau8; 4];
        d.read_config(10, &mut past);
        assert_eq!(past, [b'e', 0, 0, 0]);
        assert!(Virtio9p::new(
            "",
            Share::Memory(MemoryShare::new()),
            NinePConfig::default()
        )
        .is_err());
    }

    #[test]
    fn a_request_chain_gets_its_reply_and_bad_chains_complete_empty() {
        let mem =
            Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap());
        let vq = MockSplitQueue::new(mem.as_ref(), 16);
        let req = tversion(65536);
        mem.write_slice(&req, GuestAddress(0x10000)).unwrap();
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x10000, req.len() as u32, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x20000, 256, 2 /* WRITE */, 0)),
        ];
        vq.build_desc_chain(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let share = MemoryShare::new()
            .with_file("f", b"x".to_vec(), 0o644)
            .unwrap();
        let server = Mutex::new(NinePServer::new(
            Share::Memory(share),
            NinePConfig::default(),
        ));
        assert!(process_requests(&mem, &mut q, &server));
        let used_len: u32 = mem.read_obj(vq.used_addr().unchecked_add(4 + 4)).unwrap();
        let mut reply = vec![0u8; used_len as usize];
        mem.read_slice(&mut reply, GuestAddress(0x20000)).unwrap();
        assert_eq!(reply[4], 101, "Rversion");
        assert_eq!(&reply[reply.len() - 8..], b"9P2000.L");

        // A reply buffer too small for the answer: completed with 0 bytes, device keeps going.
        let vq2 = MockSplitQueue::new(mem.as_ref(), 16);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x10000, req.len() as u32, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x20000, 4, 2, 0)),
        ];
        vq2.build_desc_chain(&descs).unwrap();
        let mut q2: Queue = vq2.create_queue().unwrap();
        assert!(process_requests(&mem, &mut q2, &server));
        let used_len: u32 = mem.read_obj(vq2.used_addr().unchecked_add(4 + 4)).unwrap();
        assert_eq!(used_len, 0);
        // A descriptor pointing outside guest memory.
        let vq3 = MockSplitQueue::new(mem.as_ref(), 16);
        let descs = [RawDescriptor::from(SplitDescriptor::new(
            0xfff_0000, 64, 0, 0,
        ))];
        vq3.build_desc_chain(&descs).unwrap();
        let mut q3: Queue = vq3.create_queue().unwrap();
        assert!(process_requests(&mem, &mut q3, &server));
    }
}
