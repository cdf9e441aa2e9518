//! The ISA debug console at port 0x402 (QEMU's `isa-debugcon`, Bochs' port E9 hack) that
//! OVMF's debug library writes its log to. Reading the port returns 0xE9, which is how OVMF
//! decides the console exists. Bytes are collected into lines and handed to a sink; a line
//! longer than [`MAX_LINE`] is cut so a guest cannot make the VMM buffer without bound.

use crate::bus::PioDevice;

/// The port OVMF uses.
pub const DEBUGCON_PORT: u16 = 0x402;
/// What a read returns.
pub const DEBUGCON_MAGIC: u8 = 0xe9;
/// Longest line handed to the sink in one piece.
pub const MAX_LINE: usize = 512;

/// Receives each complete line (without its newline).
pub type LineSink = Box<dyn FnMut(&[u8]) + Send>;

/// The debug console.
pub struct DebugConsole {
    line: Vec<u8>,
    sink: LineSink,
    bytes: u64,
}

impl DebugConsole {
    /// A console that hands lines to `sink`.
    pub fn new(sink: LineSink) -> Self {
        Self {
            line: Vec::with_capacity(128),
            sink,
            bytes: 0,
        }
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Hands a partial last line to the sink (at VM stop).
    pub fn flush(&mut self) {
        if !self.line.is_empty() {
            (self.sink)(&self.line);
            self.line.clear();
        }
    }
}

impl PioDevice for DebugConsole {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(DEBUGCON_MAGIC);
    }

    /// One byte per port write, or a whole string from `rep outsb`.
    fn write(&mut self, _offset: u16, data: &[u8]) {
        self.bytes += data.len() as u64;
        for &b in data {
            match b {
                b'\n' => {
                    (self.sink)(&self.line);
                    self.line.clear();
                }
                b'\r' => {}
                _ => {
                    self.line.push(b);
                    if self.line.len() >= MAX_LINE {
                        self.flush();
                    }
                }
            }
        }
    }
}

impl Drop for DebugConsole {
    fn drop(&mut self) {
        self.flush();
    }
}
