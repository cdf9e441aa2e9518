//! Legacy PC devices: 8250 UART, i8042 (reset), CMOS RTC, POST/debug port 0x80, the ACPI
//! sleep/reset registers cvmm's FADT points at, the event register of the Generic Event
//! Device (the hardware-reduced power button), system control port A (0x92) and the pvpanic
//! port.
//!
//! Devices that end the VM report a [`GuestStop`] through a shared [`StopSignal`].

mod cmos;
mod debug_port;
mod ged;
mod i8042;
mod port92;
mod power;
mod pvpanic;
mod serial;

pub use cmos::CmosRtc;
pub use debug_port::{debug_code_stage, DebugPort};
pub use ged::{GenericEventDevice, GED_EVENT_POWER_BUTTON, GED_PORT_LEN};
pub use i8042::I8042;
pub use port92::SystemControlA;
pub use power::{AcpiPowerPorts, ACPI_RESET_VALUE, ACPI_S5_SLP_TYP};
pub use pvpanic::PvPanic;
pub use serial::{EventFdTrigger, SerialPort};

use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// Why the guest asked the VM to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStop {
    /// ACPI S5 (power-off).
    PowerOff,
    /// A reset through the i8042, the ACPI reset register or similar.
    Reset,
    /// The guest reported a panic through pvpanic.
    Panic,
}

/// A one-shot "the VM must stop" signal shared by devices and vCPUs; the first reason wins.
#[derive(Clone)]
pub struct StopSignal {
    reason: Arc<Mutex<Option<GuestStop>>>,
    evt: Arc<EventFd>,
}

impl StopSignal {
    /// Creates an unsignalled stop signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Arc::new(Mutex::new(None)),
            evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        })
    }

    /// Records `why` (unless a reason is already recorded) and wakes the waiter.
    pub fn stop(&self, why: GuestStop) {
        let mut r = crate::bus::lock(&self.reason);
        if r.is_none() {
            *r = Some(why);
        }
        let _ = self.evt.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<GuestStop> {
        *crate::bus::lock(&self.reason)
    }

    /// The eventfd that becomes readable when the VM must stop.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}
