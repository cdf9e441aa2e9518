//! Legacy PC devices: 8250 UART, i8042, CMOS RTC, debug port 0x80, power and panic ports.
