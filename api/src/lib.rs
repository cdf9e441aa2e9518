//! The control plane of cvmm: the Cocos `ManagerService` gRPC API (tonic), its configuration
//! from `MANAGER_*` variables, the VM registry, the host-port allocator, the supervisor of VM
//! processes, `/health` and `/metrics`.
