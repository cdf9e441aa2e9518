//! A read-only 9P2000.L server for the `env_share` and `certs_share` mounts, independent of the
//! transport: [`NinePServer::handle`] takes one whole request message and produces one reply
//! (the virtio-9p device only moves bytes).
//!
//! Supported: Tversion (msize = min(client, ours), at least 8 KiB; "9P2000.L" or "unknown";
//! resets all fids), Tattach (no auth), Twalk (≤ 16 names; an error only if the first name
//! fails, otherwise a partial Rwalk without binding newfid), Tgetattr, Tlopen, Tread and
//! Treaddir (count clamped to msize − 24; readdir offsets are resume cookies, `.`/`..` listed),
//! Treadlink, Tstatfs, Tclunk, Tflush, Txattrwalk (ENODATA for a name, an empty list for ""),
//! Tfsync/Tlock (success), Tgetlock (unlocked). Tlopen with write/create/trunc flags, Tremove
//! (which still clunks the fid) and every mutating request (Tlcreate, Tsymlink, Tmknod,
//! Trename(at), Tunlinkat, Tmkdir, Tsetattr, Txattrcreate, Tlink, Twrite, Tcreate, Twstat)
//! answer EROFS; unknown types EOPNOTSUPP; malformed messages EINVAL, oversized ones EMSGSIZE.
//! Fids are capped ([`NinePConfig::max_fids`], EMFILE beyond); a newfid in use is EEXIST.
//!
//! Confinement of [`DirectoryShare`] (see `host.rs`): paths are resolved from the share's root
//! fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS)` (or
//! `openat(O_NOFOLLOW)` per component without openat2), never by string prefix; symlinks are
//! reported, never followed; `..` at the root stays at the root. [`MemoryShare`] serves a flat
//! directory of in-memory files, root-owned.

mod host;
mod memory;
pub mod proto;
mod server;
mod share;
mod sys;
#[cfg(test)]
mod tests;

pub use host::DirectoryShare;
pub use memory::MemoryShare;
pub use proto::{parse_request, Message, ProtoError, Request};
pub use server::{NinePConfig, NinePServer, MIN_MSIZE};
pub use share::{Share, ShareError};
pub mod virtio;
