//! virtio-9p: a read-only 9P2000.L server for the `env_share` and `certs_share` mounts.
