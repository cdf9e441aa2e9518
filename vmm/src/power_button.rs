//! The VM's ACPI power button, pressed from outside the guest (the control socket's
//! `powerdown`): a [`PowerButton`] handle any thread can press (an eventfd write, allowed
//! under every seccomp filter), and the VM's event loop, which hands each press to the
//! platform's button device — the fixed-feature button of the q35 PM block (SCI on IRQ 9) for
//! firmware boot, the Generic Event Device's power button (its GSI) for direct boot. What the
//! guest does with a press is its business: an OS with ACPI shuts down and enters S5.

use devices::chipset::AcpiPm;
use devices::legacy::GenericEventDevice;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// A press request, shared between whoever presses and the VM that delivers.
#[derive(Clone)]
pub struct PowerButton {
    evt: Arc<EventFd>,
}

impl PowerButton {
    /// A button with no press waiting.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        })
    }

    /// Presses the button once; the VM delivers the press from its event loop (a press
    /// before the VM runs is delivered when it starts).
    pub fn press(&self) -> std::io::Result<()> {
        self.evt.write(1)
    }

    /// Takes the presses waiting (0 when there are none).
    fn take_presses(&self) -> u64 {
        self.evt.read().unwrap_or(0)
    }
}

/// The platform's power-button device.
#[derive(Clone)]
pub enum ButtonDevice {
    /// q35: PWRBTN_STS in the ICH9 PM block, the SCI.
    Fixed(Arc<Mutex<AcpiPm>>),
    /// Hardware-reduced: the GED's power-button event and its GSI.
    Ged(Arc<Mutex<GenericEventDevice>>),
}

impl ButtonDevice {
    /// One press of the button.
    pub fn press(&self) {
        match self {
            ButtonDevice::Fixed(pm) => devices::bus::lock(pm).press_power_button(),
            ButtonDevice::Ged(ged) => devices::bus::lock(ged).press_power_button(),
        }
    }
}

/// Delivers the presses waiting on `button` to `device`; returns how many there were (several
/// presses before the guest reacts are one press for the guest, as on hardware).
pub fn deliver(button: &PowerButton, device: &ButtonDevice) -> u64 {
    let n = button.take_presses();
    if n > 0 {
        device.press();
    }
    n
}

/// The event-loop subscriber that delivers presses and marks them on the timeline.
pub(crate) struct ButtonWatcher {
    pub button: PowerButton,
    pub device: ButtonDevice,
    pub timeline: crate::timeline::Timeline,
}

impl MutEventSubscriber for ButtonWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        if deliver(&self.button, &self.device) > 0 {
            self.timeline.mark("power_button");
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(
            self.button.evt.as_ref(),
            event_manager::EventSet::IN,
        )) {
            tracing::error!("cannot watch the power button eventfd: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control;
    use crate::timeline::Timeline;
    use devices::bus::PioDevice;
    use devices::chipset::{PmDecode, PWRBTN_EN, PWRBTN_STS, Q35_PM_BASE};
    use devices::legacy::{StopSignal, GED_EVENT_POWER_BUTTON};

    fn sock(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("cvmm-pwrbtn-{}-{tag}.sock", std::process::id()))
    }

    /// Serves a control socket whose `powerdown` presses `button`, as `cvmm vm` does.
    fn serve(tag: &str, button: &PowerButton) -> std::path::PathBuf {
        let path = sock(tag);
        let b = button.clone();
        control::start_with(
            &path,
            format!("vm-{tag}"),
            Timeline::new(),
            control::ControlHooks {
                on_stop: Box::new(|| {}),
                on_powerdown: Some(Box::new(move || b.press())),
            },
        )
        .unwrap();
        path
    }

    fn pm1(pm: &Arc<Mutex<AcpiPm>>) -> u32 {
        let mut b = [0u8; 4];
        devices::bus::lock(pm).read(0, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn powerdown_on_the_control_socket_reaches_the_q35_pm_block_and_raises_the_sci() {
        let button = PowerButton::new().unwrap();
        let path = serve("q35", &button);
        let decode = Arc::new(PmDecode::default());
        decode.set(Some(Q35_PM_BASE));
        let sci = Arc::new(Mutex::new(Vec::new()));
        let s2 = sci.clone();
        let pm = AcpiPm::new(decode, StopSignal::new().unwrap())
            .with_sci(Box::new(move |level| s2.lock().unwrap().push(level)));
        let pm = Arc::new(Mutex::new(pm));
        // The guest's button driver has enabled the event.
        devices::bus::lock(&pm).write(2, &PWRBTN_EN.to_le_bytes());
        let device = ButtonDevice::Fixed(pm.clone());
        assert_eq!(deliver(&button, &device), 0, "nothing pressed yet");

        control::powerdown(&path).unwrap();
        assert_eq!(deliver(&button, &device), 1);
        assert_eq!(pm1(&pm) & 0xffff, u32::from(PWRBTN_STS));
        assert_eq!(*sci.lock().unwrap(), [true]);
        // The guest acknowledges; the SCI is released and the VM keeps running.
        devices::bus::lock(&pm).write(0, &PWRBTN_STS.to_le_bytes());
        assert_eq!(*sci.lock().unwrap(), [true, false]);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn powerdown_on_the_control_socket_reaches_the_ged_and_its_gsi() {
        let button = PowerButton::new().unwrap();
        let path = serve("ged", &button);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ged = Arc::new(Mutex::new(GenericEventDevice::new(
            irq.try_clone().unwrap(),
        )));
        let device = ButtonDevice::Ged(ged.clone());
        control::powerdown(&path).unwrap();
        control::powerdown(&path).unwrap();
        assert_eq!(deliver(&button, &device), 2, "two requests waiting");
        assert_eq!(irq.read().unwrap(), 1, "one edge on the GED's GSI");
        let mut b = [0u8];
        devices::bus::lock(&ged).read(0, &mut b);
        assert_eq!(b[0], GED_EVENT_POWER_BUTTON, "what _EVT reads");
        let _ = std::fs::remove_file(&path);
    }
}
