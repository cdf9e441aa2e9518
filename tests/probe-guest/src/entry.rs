//! Boot entry points, written in assembly.
//!
//! - `linux_entry32` at 0x100000: Linux 32-bit boot protocol (protected mode, esi = boot_params).
//! - `linux_entry64` at 0x100200: Linux 64-bit boot protocol (long mode, rsi = boot_params).
//! - `pvh_entry32`: PVH (protected mode, paging off, ebx = hvm_start_info), in the Xen note.
//! - `.setup16`: real-mode stub placed by `mkbzimage.py` at setup offset 0x200, for loaders that
//!   start a bzImage in real mode (QEMU): collects the e820 map with int 0x15, builds a zero page
//!   and joins the 32-bit path.
//! - `fw_entry32`: FW protocol (`probe-fw.bin`, the probe as firmware). The reset vector at
//!   0xFFFFFFF0 and a stub in the same page (`.fwpage`, not loaded, placed by `mkfwimage.py`)
//!   enter protected mode, copy the image from the start of the flash to 0x100000 and jump here.
//!
//! Every path loads its own GDT and the link-time identity map of 0..4 GiB with 2 MiB pages
//! (never 1 GiB pages, which PVM cannot run), zeroes .bss, then calls `rust_main(proto, info)`
//! on the probe's own stack. On PVM every guest instruction is emulated (~1 µs each), so the
//! entry path does as little work as it can.

core::arch::global_asm!(
    r#"
    .set PROTO_PVH, 1
    .set PROTO_LINUX, 2
    .set PROTO_FW, 3
    .set FW_FLASH_BASE, 0xfffc0000  /* probe-fw.bin: 256 KiB ending at 4 GiB */
    .set SEL_CODE64, 0x08
    .set SEL_DATA, 0x10
    .set SEL_CODE32, 0x18

    /* All 32-bit code lives in .text32 (0x100000..0x100200), so check-no-sse.sh can
       disassemble it as 32-bit code. */
    .section .text32, "ax"
    .code32
    .globl linux_entry32
linux_entry32:                  /* 0x100000 */
    cli
    movb $0x40, %al
    outb %al, $0x80
    movl $PROTO_LINUX, %edi
    jmp common32

    .globl pvh_entry32
pvh_entry32:
    cli
    movb $0x40, %al
    outb %al, $0x80
    movl %ebx, %esi
    movl $PROTO_PVH, %edi
    jmp common32

    /* Reached from the firmware reset page (.fwpage), which copied the image here. */
    .globl fw_entry32
fw_entry32:
    xorl %esi, %esi
    movl $PROTO_FW, %edi
    jmp common32

    /* Reached from the real-mode stub, with our GDT loaded and esi = zero page. */
from_setup16:
    movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl $PROTO_LINUX, %edi
    jmp common32

    /* Protected mode, paging off: edi = protocol, esi = boot info. */
common32:
    movl %edi, %ebp
    lgdt probe_gdt_ptr
    ljmp $SEL_CODE32, $1f
1:  movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %eax, %fs
    movl %eax, %gs
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    movl $probe_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax             /* PAE */
    movl %eax, %cr4
    movl $0xc0000080, %ecx      /* EFER */
    rdmsr
    orl $0x100, %eax            /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax       /* PG | PE */
    movl %eax, %cr0
    ljmp $SEL_CODE64, $long_mode

    /* 64-bit code; the linker script places .text.boot at 0x100200. */
    .section .text.boot, "ax"
    .code64
    .globl linux_entry64
linux_entry64:                  /* 0x100200 */
    cli
    movb $0x40, %al
    outb %al, $0x80
    movq %rsi, %r12
    lgdt probe_gdt_ptr(%rip)
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    movl $probe_pml4, %eax
    movq %rax, %cr3
    pushq $SEL_CODE64
    leaq 3f(%rip), %rax
    pushq %rax
    lretq
3:  movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl $PROTO_LINUX, %edi
    movq %r12, %rsi
    jmp enter_rust

long_mode:
    movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl %ebp, %edi
    movl %esi, %esi
enter_rust:
    movq $probe_stack_top, %rsp
    xorl %ebp, %ebp
    call rust_main
4:  cli
    hlt
    jmp 4b

    .section .data.gdt, "aw"
    .balign 16
probe_gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 0x08: 64-bit code, accessed */
    .quad 0x00cf93000000ffff    /* 0x10: flat data, accessed */
    .quad 0x00cf9b000000ffff    /* 0x18: flat 32-bit code, accessed */
probe_gdt_end:
probe_gdt_ptr:
    .word probe_gdt_end - probe_gdt - 1
    .quad probe_gdt

    /* Identity map of 0..4 GiB, built at link time: PML4[0] -> PDPT, PDPT[0..4] -> PD[0..4],
       2048 x 2 MiB pages (present | writable | page size). Never 1 GiB pages. */
    .section .data.pagetables, "aw"
    .balign 4096
probe_pml4:
    .quad probe_pdpt + 3
    .fill 511, 8, 0
    .globl probe_pdpt
probe_pdpt:
    .quad probe_pd + 0x0003
    .quad probe_pd + 0x1003
    .quad probe_pd + 0x2003
    .quad probe_pd + 0x3003
    .fill 508, 8, 0
    .globl probe_pd
probe_pd:
    .set pd_addr, 0
    .rept 2048
    .quad pd_addr + 0x83
    .set pd_addr, pd_addr + 0x200000
    .endr

    .section .stack, "aw", @nobits
    .balign 16
    .skip 64 * 1024
probe_stack_top:

    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* name size ("Xen\0") */
    .long 4                     /* descriptor size */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_entry32

    /* Firmware reset page (probe-fw.bin): the last 4 KiB below 4 GiB, one non-loaded section
       addressed from 0 (= 0xfffff000) that mkfwimage.py copies to the end of the flash image.
       Fixed layout, so check-no-sse.sh can disassemble each part in its mode:
         0x000 16-bit: loads fw_gdt, enters protected mode
         0x080 32-bit: copies the image (offset 0 of the flash) to 0x100000, jumps to fw_entry32
         0x100 data:   fw_gdt (same selectors as probe_gdt; common32 then loads probe_gdt)
         0xff0 16-bit: the reset vector (CS base 0xffff0000, IP 0xfff0): near jump to 0x000
       Padding is hlt. No stack is used before common32. */
    .set FW_PAGE, 0xfffff000
    .section .fwpage, "x", @progbits
    .code16
fw_page:
    cli
    cld
    movb $0x40, %al
    outb %al, $0x80
    lgdtl %cs:(FW_PAGE - 0xffff0000 + fw_gdtr - fw_page)
    movl %cr0, %eax
    andl $0x9fffffff, %eax      /* caches on: clear CD and NW (set at reset) */
    orl $1, %eax                /* PE */
    movl %eax, %cr0
    ljmpl $SEL_CODE32, $(FW_PAGE + fw_page32 - fw_page)

    .org fw_page + 0x80, 0xf4
    .code32
fw_page32:
    movl $SEL_DATA, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movl $FW_FLASH_BASE, %esi
    movl $__image_start, %edi
    movl $__image_size, %ecx
    rep movsb
    ljmp $SEL_CODE32, $fw_entry32

    .org fw_page + 0x100, 0xf4
fw_gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf93000000ffff    /* 0x10: flat data */
    .quad 0x00cf9b000000ffff    /* 0x18: flat 32-bit code */
fw_gdt_end:
fw_gdtr:
    .word fw_gdt_end - fw_gdt - 1
    .long FW_PAGE + fw_gdt - fw_page

    .org fw_page + 0xff0, 0xf4
    .code16
fw_reset_vector:                /* 0xfffffff0 */
    .byte 0xe9                  /* jmp near: IP 0xfff3 + rel16 = 0xf000 */
    .word fw_page - (fw_reset_vector + 3)
    .org fw_page + 0x1000, 0xf4

    /* Real mode, CS = setup segment + 0x20, IP = 0: this is offset 0x200 of the setup. */
    .section .setup16, "", @progbits
    .code16
setup16:
    .byte 0xeb, start16 - setup16 - 2   /* short jmp over the setup header */
    .org setup16 + 0x70                 /* header (0x202..0x268), filled by mkbzimage.py */
start16:
    cli
    cld
    movw %cs, %ax
    subw $0x20, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw $0x2000, %sp
    movb $0x40, %al
    outb %al, $0x80
    /* Zero page at offset 0x2000 of the setup segment: clear it, copy the setup header. */
    movw $0x2000, %di
    movw $0x1000, %cx
    xorb %al, %al
    rep stosb
    movw $0x1f1, %si
    movw $0x21f1, %di
    movw $(0x290 - 0x1f1), %cx
    rep movsb
    /* e820 map into zero page + 0x2d0, count at + 0x1e8. */
    xorl %ebx, %ebx
    xorw %bp, %bp
    movw $0x22d0, %di
5:  movl $0xe820, %eax
    movl $0x534d4150, %edx
    movl $20, %ecx
    int $0x15
    jc 6f
    cmpl $0x534d4150, %eax
    jne 6f
    incw %bp
    addw $20, %di
    cmpw $128, %bp
    jae 6f
    testl %ebx, %ebx
    jnz 5b
6:  movw %bp, %ax
    movb %al, 0x21e8
    xorl %esi, %esi
    movw %ds, %si
    shll $4, %esi
    addl $0x2000, %esi
    lgdtl %cs:gdtr16
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $SEL_CODE32, $from_setup16
gdtr16:
    .word probe_gdt_end - probe_gdt - 1
    .long probe_gdt
"#,
    options(att_syntax)
);
