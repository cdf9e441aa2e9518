//! `probe.ioapic=1`: the I/O APIC the MADT names, driven through its MMIO window (ID,
//! VERSION, ARB, the writable bits of a redirection entry), then a real interrupt: COM1's
//! transmitter-empty interrupt (IRQ 4) through pin 4 to vector 0x40 of this CPU, once
//! edge-triggered and once level-triggered (whose EOI a split irqchip forwards to the VMM).
//! The handler is a few instructions of assembly behind a minimal IDT; it counts, acknowledges
//! the UART (reads IIR) and writes the local APIC's EOI register.
//!
//! Markers (all `cvmm-probe: `):
//! ```text
//! ioapic addr=0x<8 hex> pcat=<0|1> ver=0x<8 hex> id=0x<8 hex> arb=0x<8 hex>
//! ioapic rte-rw=0x<16 hex>           (redirection entry 5 after writing all ones, then masked)
//! ioapic irq edge=<n> level=<n>      (interrupts counted on vector 0x40 within 1 s each)
//! ioapic-error no-madt|no-ioapic
//! ```

use crate::acpi;
use crate::clock::Deadline;
use crate::mmio::{uncache_low, Mmio};
use crate::out::{line_start, put_hex};
use crate::serial::{inb, outb, put_dec, puts};
use core::sync::atomic::{AtomicU64, Ordering};

const LAPIC: u64 = 0xfee0_0000;
const LAPIC_ID: u64 = 0x20;
const LAPIC_TPR: u64 = 0x80;
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_LVT0: u64 = 0x350;
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const VECTOR: u64 = 0x40;
const SPURIOUS: u64 = 0x3f;
const COM1: u16 = 0x3f8;
const COM1_PIN: u8 = 4;
const RTE_MASKED: u64 = 1 << 16;
const RTE_LEVEL: u64 = 1 << 15;
/// Gates up to and including `VECTOR`.
const IDT_ENTRIES: usize = VECTOR as usize + 1;

/// Interrupts the handler saw.
static IRQS: AtomicU64 = AtomicU64::new(0);
/// The IDT: two u64 per gate.
static IDT: [AtomicU64; 2 * IDT_ENTRIES] = [const { AtomicU64::new(0) }; 2 * IDT_ENTRIES];

#[cfg(not(test))]
extern "C" {
    fn probe_irq_entry();
    fn probe_spurious_entry();
}

#[cfg(not(test))]
core::arch::global_asm!(
    r#"
    .section .text
    .globl probe_irq_entry
probe_irq_entry:
    pushq %rax
    pushq %rdx
    addq $1, {irqs}(%rip)
    movw $0x3fa, %dx        /* COM1 IIR: reading it acknowledges THRE */
    inb %dx, %al
    movl $0xfee000b0, %eax  /* local APIC EOI */
    movl $0, (%rax)
    popq %rdx
    popq %rax
    iretq
    .globl probe_spurious_entry
probe_spurious_entry:
    iretq
"#,
    irqs = sym IRQS,
    options(att_syntax)
);

/// True when the command line asks for the IOAPIC test.
pub fn wanted(cmdline: &[u8]) -> bool {
    crate::bootinfo::option(cmdline, b"probe.ioapic").is_some()
}

fn reg(io: Mmio, index: u8) -> u32 {
    io.w32(IOREGSEL, u32::from(index));
    io.r32(IOWIN)
}

fn set_reg(io: Mmio, index: u8, v: u32) {
    io.w32(IOREGSEL, u32::from(index));
    io.w32(IOWIN, v);
}

fn set_rte(io: Mmio, pin: u8, v: u64) {
    set_reg(io, 0x11 + 2 * pin, (v >> 32) as u32);
    set_reg(io, 0x10 + 2 * pin, v as u32);
}

fn rte(io: Mmio, pin: u8) -> u64 {
    u64::from(reg(io, 0x10 + 2 * pin)) | u64::from(reg(io, 0x11 + 2 * pin)) << 32
}

fn hex32(label: &[u8], v: u32) {
    puts(label);
    put_hex(u64::from(v), 8);
}

/// Runs the test with the tables under `rsdp`.
pub fn run(rsdp: Option<u64>) {
    let Some(madt) = rsdp.and_then(|r| acpi::find_table(r, b"APIC")) else {
        line_start();
        puts(b"ioapic-error no-madt\n");
        return;
    };
    let (Some(addr), Some(io)) = (
        acpi::madt_ioapic(madt),
        acpi::madt_ioapic(madt).and_then(|a| Mmio::map(a, 0x20)),
    ) else {
        line_start();
        puts(b"ioapic-error no-ioapic\n");
        return;
    };
    uncache_low(addr, 0x20);
    uncache_low(LAPIC, 0x1000);
    line_start();
    puts(b"ioapic addr=0x");
    put_hex(addr, 8);
    puts(b" pcat=");
    put_dec(u64::from(acpi::madt_flags(madt).unwrap_or(0) & 1));
    hex32(b" ver=0x", reg(io, 1));
    hex32(b" id=0x", reg(io, 0));
    hex32(b" arb=0x", reg(io, 2));
    puts(b"\n");

    set_rte(io, 5, u64::MAX);
    let rw = rte(io, 5);
    set_rte(io, 5, RTE_MASKED);
    line_start();
    puts(b"ioapic rte-rw=0x");
    put_hex(rw, 16);
    puts(b"\n");

    let edge = deliver(io, 0);
    let level = deliver(io, RTE_LEVEL);
    line_start();
    puts(b"ioapic irq edge=");
    put_dec(edge);
    puts(b" level=");
    put_dec(level);
    puts(b"\n");
}

/// Routes COM1's interrupt (pin 4, `trigger` bits) to vector 0x40 of this CPU, enables the
/// UART's THRE interrupt with interrupts on for up to 1 s, and returns how many arrived.
fn deliver(io: Mmio, trigger: u64) -> u64 {
    let Some(lapic) = Mmio::map(LAPIC, 0x1000) else {
        return 0;
    };
    load_idt();
    // Nothing else may interrupt: with KVM's irqchip the UART's line also reaches the 8259
    // (unprogrammed, vector base 0), which LINT0 would deliver as ExtINT. Mask both.
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    lapic.w32(LAPIC_LVT0, lapic.r32(LAPIC_LVT0) | 1 << 16);
    lapic.w32(LAPIC_TPR, 0);
    lapic.w32(LAPIC_SVR, (1 << 8) | SPURIOUS as u32);
    let apic_id = u64::from(lapic.r32(LAPIC_ID) >> 24);
    IRQS.store(0, Ordering::SeqCst);
    set_rte(io, COM1_PIN, VECTOR | trigger | apic_id << 56);
    outb(COM1 + 4, 0x0b); // DTR | RTS | OUT2 (OUT2 gates the IRQ line on PCs)
    outb(COM1 + 1, 0x02); // IER: transmitter holding register empty
    let deadline = Deadline::after_ms(1000);
    // SAFETY: the IDT loaded above has gates for every vector the probe enables (the spurious
    // vector and 0x40); interrupts are on only for this wait.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
    while IRQS.load(Ordering::SeqCst) == 0 && !deadline.expired() {
        core::hint::spin_loop();
    }
    // SAFETY: turns interrupts back off; touches no memory.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
    outb(COM1 + 1, 0x00);
    let _ = inb(COM1 + 2);
    set_rte(io, COM1_PIN, RTE_MASKED);
    outb(COM1 + 4, 0x03);
    IRQS.load(Ordering::SeqCst)
}

/// An interrupt gate (present, DPL 0, type 0xE) to `handler` in code segment `cs`.
fn gate(handler: u64, cs: u64) -> (u64, u64) {
    let low = (handler & 0xffff) | cs << 16 | 0x8e << 40 | ((handler >> 16) & 0xffff) << 48;
    (low, handler >> 32)
}

#[cfg(not(test))]
fn load_idt() {
    let cs: u64;
    // SAFETY: reads the code segment selector; no memory access.
    unsafe { core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack)) };
    for (vector, handler) in [
        (SPURIOUS, probe_spurious_entry as *const () as u64),
        (VECTOR, probe_irq_entry as *const () as u64),
    ] {
        let (lo, hi) = gate(handler, cs & 0xffff);
        IDT[2 * vector as usize].store(lo, Ordering::SeqCst);
        IDT[2 * vector as usize + 1].store(hi, Ordering::SeqCst);
    }
    let base = IDT.as_ptr() as u64;
    let limit = (IDT_ENTRIES * 16 - 1) as u16;
    let idtr = [
        limit,
        base as u16,
        (base >> 16) as u16,
        (base >> 32) as u16,
        (base >> 48) as u16,
    ];
    // SAFETY: `idtr` describes IDT, a static that lives for the whole run; gates that are not
    // filled in are not present.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) idtr.as_ptr(), options(nostack)) };
}

#[cfg(test)]
fn load_idt() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_splits_the_handler_address() {
        let (lo, hi) = gate(0x1234_5678_9abc_def0, 0x08);
        assert_eq!(lo & 0xffff, 0xdef0);
        assert_eq!(lo >> 16 & 0xffff, 0x08);
        assert_eq!(lo >> 40 & 0xff, 0x8e);
        assert_eq!(lo >> 48, 0x9abc);
        assert_eq!(hi, 0x1234_5678);
    }
}
