#!/bin/sh
# L1 case: the firmware platform with stock Linux.
#  1. direct boot (PVH vmlinux, 2 vCPUs): the guest sees cvmm's ACPI tables, 2 CPUs and the GED
#     power button (ACPI0013 bound to its driver, PNP0C0C); OVMF boots see the fixed one;
#  2. Debian's unified OVMF.fd as a ROM (--firmware), the bzImage handed over by fw_cfg;
#  3. OVMF_CODE_4M.fd + a copy of OVMF_VARS_4M.fd as CFI flash (--firmware-code/-vars):
#     the variable store on disk changes (OVMF writes its boot variables);
#  4. the power button pressed with `cvmm ctl SOCK powerdown --wait 60` on direct boot (GED)
#     and under OVMF (fixed feature): the guest's button driver delivers KEY_POWER, the guest
#     powers off (l2-cases/powerbutton.sh does what acpid would), cvmm exits 0 and ctl, which
#     waited for that, exits 0 saying how long it took.
# Firmware boots use 1 vCPU (firmware SMP start-up livelocks the rig, test-environment.md).
# Needs run-l1.sh --add <cvmm>:/bin/cvmm and the OVMF images under /l2/ (run-tier-c.sh adds
# them). RIG_FW_QEMU=1 also boots QEMU q35 + OVMF.fd for comparison (it has crashed the
# outer QEMU in this rig before).
. /lib/rig/case-lib.sh

command -v cvmm >/dev/null || { fail cvmm-l2-firmware "no cvmm in L1"; exit 1; }
rc=0
FW_TIMEOUT=${RIG_FW_TIMEOUT:-600}
FW_APPEND="$L2_APPEND rig.l2=acpi"
# The firmware runs boot the bzImage (OVMF loads it through fw_cfg); the label follows.

# acpi_check NAME WANT_TABLES WANT_EFI: the guest's acpi line lists these tables and efi.
acpi_check() {
    line=$(grep -a 'RIG-L2: acpi ' "/tmp/$1.log" | head -n 1)
    result "$1 $line"
    for t in $2; do
        echo "$line" | grep -q "[[ ]$t[] ]" || { fail "$1" "table $t missing: $line"; return 1; }
    done
    echo "$line" | grep -q "efi=$3" || { fail "$1" "expected efi=$3: $line"; return 1; }
    pass "$1-acpi"
}

# button_check NAME WANT_BUTTONS [GED]: the guest enumerated these ACPI buttons; with GED=1 the
# generic event device also bound to its driver.
button_check() {
    line=$(grep -a 'RIG-L2: acpi ' "/tmp/$1.log" | head -n 1)
    for b in $2; do
        echo "$line" | grep -q "buttons=\[[^]]*$b" || { fail "$1-button" "no $b: $line"; return 1; }
    done
    if [ "${3:-0}" = 1 ] && echo "$line" | grep -q "ged_driver=none"; then
        fail "$1-button" "the GED bound no driver: $line"; return 1
    fi
    pass "$1-button"
}

# press_check NAME CVMM-RUN-ARGS...: boot with rig.l2=powerbutton and a control socket; once
# the guest waits for the button, press it with `cvmm ctl ... --wait`; the guest must read
# KEY_POWER and power off, so cvmm exits 0 and ctl reports the power-off.
press_check() {
    name="$1"
    shift
    sock=/tmp/$name.sock
    rm -f "$sock"
    timeout "$FW_TIMEOUT" cvmm run "$@" --append "$L2_APPEND rig.l2=powerbutton" \
        --control "$sock" </dev/null >"/tmp/$name.log" 2>&1 &
    pid=$!
    pressed=0
    crc=
    while alive $pid; do
        if [ $pressed = 0 ] && grep -q 'RIG-L2: powerbutton waiting' "/tmp/$name.log"; then
            # Blocks until the VM has ended (or 60 s have passed: exit 1, the VM left running).
            t_press=$(now_ms)
            cvmm ctl "$sock" powerdown --wait 60 >/dev/null 2>>"/tmp/$name.ctl"
            crc=$?
            pressed=1
        fi
        usleep 100000
    done
    wait $pid
    vrc=$?
    line=$(grep -a 'RIG-L2: powerbutton ' "/tmp/$name.log" | tail -n 1)
    waited=$(grep -o 'powered off [0-9]* ms after the press' "/tmp/$name.ctl" 2>/dev/null)
    if [ $pressed = 1 ] && [ "$crc" = 0 ] && [ -n "$waited" ] \
        && echo "$line" | grep -q 'pressed type=1 code=116' && [ $vrc = 0 ]; then
        result "$name press_to_exit_ms=$(( $(now_ms) - t_press )) ctl: $waited; $line"
        pass "$name"
    else
        fail "$name" "pressed=$pressed ctl_rc=${crc:-none} vmm_rc=$vrc guest: ${line:-no powerbutton line} $(head -c 200 "/tmp/$name.ctl" 2>/dev/null)"
        return 1
    fi
}

name=cvmm-fw-direct-acpi
run_l2 $name 240 cvmm run --kernel /l2/vmlinux --initrd /l2/initrd.cpio.gz \
    --append "$FW_APPEND" --smp 2 --memory 512M --net none --serial stdio
check_l2_boot $name 2 && acpi_check $name "APIC DSDT FACP MCFG" 0 \
    && button_check $name "ACPI0013 PNP0C0C" 1 || rc=1

press_check cvmm-fw-direct-powerbutton --kernel /l2/vmlinux --initrd /l2/initrd.cpio.gz \
    --smp 2 --memory 512M --net none --serial stdio || rc=1

RIG_L2_IMAGE=bzImage
if [ -f /l2/OVMF.fd ]; then
    press_check cvmm-fw-ovmf-powerbutton --firmware /l2/OVMF.fd --kernel /l2/bzImage \
        --initrd /l2/initrd.cpio.gz --smp 1 --memory 512M --net none --serial stdio || rc=1
    name=cvmm-fw-ovmf-rom
    run_l2 $name "$FW_TIMEOUT" cvmm run --firmware /l2/OVMF.fd --kernel /l2/bzImage \
        --initrd /l2/initrd.cpio.gz --append "$FW_APPEND" --smp 1 --memory 512M --net none \
        --serial stdio --timeline /tmp/$name.json --firmware-log /tmp/$name.fwlog
    check_l2_boot $name 1 && acpi_check $name "APIC DSDT FACP FACS MCFG" 1 \
        && button_check $name LNXPWRBN || rc=1
    result "$name timeline $(tr -d ' \n' </tmp/$name.json | grep -o '"phase":"fw_cfg[a-z_0-9]*","us":[0-9]*' | tr '\n' ' ')"
else
    fail cvmm-fw-ovmf-rom "no /l2/OVMF.fd in L1"; rc=1
fi

if [ -f /l2/OVMF_CODE_4M.fd ] && [ -f /l2/OVMF_VARS_4M.fd ]; then
    name=cvmm-fw-ovmf-pflash
    cp /l2/OVMF_VARS_4M.fd /tmp/vars.fd
    run_l2 $name "$FW_TIMEOUT" cvmm run --firmware-code /l2/OVMF_CODE_4M.fd \
        --firmware-vars /tmp/vars.fd --kernel /l2/bzImage --initrd /l2/initrd.cpio.gz \
        --append "$FW_APPEND" --smp 1 --memory 512M --net none --serial stdio
    if check_l2_boot $name 1 && acpi_check $name "APIC DSDT FACP FACS MCFG" 1; then
        if cmp -s /l2/OVMF_VARS_4M.fd /tmp/vars.fd; then
            fail $name "the variable store is unchanged after the boot"; rc=1
        else
            pass "$name-vars-written"
        fi
    else
        rc=1
    fi
else
    fail cvmm-fw-ovmf-pflash "no OVMF_CODE_4M.fd/OVMF_VARS_4M.fd in L1"; rc=1
fi

if [ "${RIG_FW_QEMU:-0}" = 1 ] && command -v qemu-system-x86_64 >/dev/null; then
    name=qemu-fw-ovmf
    run_l2 $name "$FW_TIMEOUT" qemu-system-x86_64 -accel kvm -cpu host -M q35 -smp 1 -m 512M \
        -nodefaults -no-user-config -nographic -serial stdio -bios /l2/OVMF.fd \
        -kernel /l2/bzImage -initrd /l2/initrd.cpio.gz -append "$FW_APPEND"
    check_l2_boot $name 1 || rc=1
fi
exit $rc
