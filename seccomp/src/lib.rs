//! Per-thread seccomp filters of cvmm, one declarative list per thread kind (vCPU, device event
//! loop, network, 9p, control socket, manager API), compiled with seccompiler and installed by
//! each thread right before it touches guest data.
