//! The POST/debug port 0x80: each byte the guest writes is handed to a sink with the time it
//! arrived (cvmm's boot timeline records them; Cloud Hypervisor's code ranges apply: firmware
//! 0x00-0x1f, boot loader 0x20-0x3f, kernel 0x40-0x5f, user space 0x60-0x7f).

use crate::bus::PioDevice;
use std::time::Instant;

/// The boot stage a debug-port code stands for, by Cloud Hypervisor's ranges: `firmware`
/// (0x00-0x1f), `boot_loader` (0x20-0x3f), `kernel` (0x40-0x5f), `user_space` (0x60-0x7f);
/// codes from 0x80 up belong to no stage.
pub fn debug_code_stage(code: u8) -> Option<&'static str> {
    match code {
        0x00..=0x1f => Some("firmware"),
        0x20..=0x3f => Some("boot_loader"),
        0x40..=0x5f => Some("kernel"),
        0x60..=0x7f => Some("user_space"),
        _ => None,
    }
}

/// Receives POST codes.
pub type PostCodeSink = Box<dyn FnMut(u8, Instant) + Send>;

/// The debug port device.
pub struct DebugPort {
    sink: PostCodeSink,
    last: u8,
}

impl DebugPort {
    /// A debug port that reports each written byte to `sink`.
    pub fn new(sink: PostCodeSink) -> Self {
        Self { sink, last: 0 }
    }
}

impl PioDevice for DebugPort {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(self.last);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        let now = Instant::now();
        for &b in data {
            self.last = b;
            (self.sink)(b, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn every_byte_reaches_the_sink_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let mut port = DebugPort::new(Box::new(move |b, _| s2.lock().unwrap().push(b)));
        port.write(0, &[0x40]);
        port.write(0, &[0x41, 0x60]);
        assert_eq!(*seen.lock().unwrap(), vec![0x40, 0x41, 0x60]);
        let mut r = [0u8];
        port.read(0, &mut r);
        assert_eq!(r[0], 0x60);
    }

    #[test]
    fn codes_map_to_their_stage_at_every_range_edge() {
        for (code, stage) in [
            (0x00, Some("firmware")),
            (0x1f, Some("firmware")),
            (0x20, Some("boot_loader")),
            (0x3f, Some("boot_loader")),
            (0x40, Some("kernel")),
            (0x5f, Some("kernel")),
            (0x60, Some("user_space")),
            (0x7f, Some("user_space")),
            (0x80, None),
            (0xff, None),
        ] {
            assert_eq!(debug_code_stage(code), stage, "{code:#04x}");
        }
    }
}
