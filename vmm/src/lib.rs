//! One cvmm virtual machine.
