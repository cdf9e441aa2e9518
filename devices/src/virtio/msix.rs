//! An MSI-X table and pending-bit array backed by [`MsiRouter`] vectors (one GSI + irqfd per
//! table entry, allocated up front). An entry is routed with its address/data whenever they or
//! its effective mask change; a vector raised while masked sets its pending bit and is
//! delivered when unmasked. With MSI-X disabled nothing is delivered (there is no INTx).

use std::sync::Arc;

use crate::interrupt::{InterruptError, MsiRouter, MsiVector};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

/// MSI-X state of one function.
pub struct MsixTable {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    vectors: Vec<MsiVector>,
    /// What each GSI is currently routed to: (address, data, masked).
    routed: Vec<Option<(u64, u32, bool)>>,
    enabled: bool,
    function_masked: bool,
    router: Arc<dyn MsiRouter>,
}

impl MsixTable {
    /// `count` entries, all masked, MSI-X disabled.
    pub fn new(count: u16, router: Arc<dyn MsiRouter>) -> Result<Self, InterruptError> {
        let n = usize::from(count);
        let vectors = (0..n)
            .map(|_| router.allocate())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            entries: vec![
                Entry {
                    ctrl: 1,
                    ..Entry::default()
                };
                n
            ],
            pending: vec![false; n],
            vectors,
            routed: vec![None; n],
            enabled: false,
            function_masked: false,
            router,
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// GSI of entry `i`.
    pub fn gsi(&self, i: usize) -> Option<u32> {
        self.vectors.get(i).map(|v| v.gsi)
    }

    /// Whether entry `i`'s pending bit is set.
    pub fn is_pending(&self, i: usize) -> bool {
        self.pending.get(i).copied().unwrap_or(false)
    }

    /// Applies the enable and function-mask bits of the capability's message control.
    pub fn set_control(&mut self, enabled: bool, function_masked: bool) {
        if (enabled, function_masked) == (self.enabled, self.function_masked) {
            return;
        }
        self.enabled = enabled;
        self.function_masked = function_masked;
        for i in 0..self.entries.len() {
            self.update(i);
        }
    }

    /// Raises vector `v`; out-of-range vectors are ignored.
    pub fn trigger(&mut self, v: u16) {
        let i = usize::from(v);
        if i >= self.entries.len() || !self.enabled {
            return;
        }
        if self.masked(i) {
            self.pending[i] = true;
        } else {
            self.deliver(i);
        }
    }

    /// Table read: aligned 4- or 8-byte accesses; anything else reads all ones.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(dwords) = Self::dwords(offset, data.len()) else {
            return;
        };
        for (k, dw) in dwords.enumerate() {
            let Some(e) = self.entries.get((dw / 4) as usize) else {
                return;
            };
            let v = [e.addr_lo, e.addr_hi, e.data, e.ctrl][(dw % 4) as usize];
            data[4 * k..4 * k + 4].copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Table write: aligned 4- or 8-byte accesses; others are dropped.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Some(dwords) = Self::dwords(offset, data.len()) else {
            tracing::debug!(offset, len = data.len(), "dropped bad MSI-X table write");
            return;
        };
        for (k, dw) in dwords.enumerate() {
            let i = (dw / 4) as usize;
            let Some(e) = self.entries.get_mut(i) else {
                return;
            };
            let v = u32::from_le_bytes([
                data[4 * k],
                data[4 * k + 1],
                data[4 * k + 2],
                data[4 * k + 3],
            ]);
            match dw % 4 {
                0 => e.addr_lo = v,
                1 => e.addr_hi = v,
                2 => e.data = v,
                _ => e.ctrl = v & 1,
            }
            self.update(i);
        }
    }

    /// Pending-bit array read: aligned 4- or 8-byte accesses; bits past the table read 0.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(dwords) = Self::dwords(offset, data.len()) else {
            return;
        };
        for (k, dw) in dwords.enumerate() {
            let first = (dw as usize).saturating_mul(32);
            let bits = self
                .pending
                .iter()
                .skip(first)
                .take(32)
                .enumerate()
                .fold(0u32, |acc, (b, &p)| acc | u32::from(p) << b);
            data[4 * k..4 * k + 4].copy_from_slice(&bits.to_le_bytes());
        }
    }

    /// Dword indices covered by an aligned 4- or 8-byte access.
    fn dwords(offset: u64, len: usize) -> Option<std::ops::Range<u64>> {
        let ok = matches!(len, 4 | 8) && offset & (len as u64 - 1) == 0;
        ok.then(|| offset / 4..offset / 4 + len as u64 / 4)
    }

    fn masked(&self, i: usize) -> bool {
        !self.enabled || self.function_masked || self.entries[i].ctrl & 1 != 0
    }

    /// Re-routes entry `i` if its message or mask changed; delivers a pending unmasked vector.
    fn update(&mut self, i: usize) {
        let e = self.entries[i];
        let want = (
            u64::from(e.addr_hi) << 32 | u64::from(e.addr_lo),
            e.data,
            self.masked(i),
        );
        if self.routed[i] != Some(want) {
            let gsi = self.vectors[i].gsi;
            match self.router.route(gsi, want.0, want.1, want.2) {
                Ok(()) => self.routed[i] = Some(want),
                Err(e) => tracing::warn!(gsi, error = %e, "MSI-X route failed"),
            }
        }
        if !want.2 && self.pending[i] {
            self.pending[i] = false;
            self.deliver(i);
        }
    }

    fn deliver(&self, i: usize) {
        if let Err(e) = self.vectors[i].irqfd.write(1) {
            tracing::warn!(gsi = self.vectors[i].gsi, error = %e, "MSI-X irqfd write failed");
        }
    }
}
