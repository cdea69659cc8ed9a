//! File-lifecycle-bound global data: state that lives while at least one file of some handler
//! is preserved.
//!
//! [`Flb`] mirrors the kernel's `liveupdate_flb_ops`. An FLB is linked to one or more handlers;
//! the engine counts the preserved files of those handlers and calls the FLB on the edges:
//!
//! ```text
//!  outgoing count 0 -> 1 : preserve         outgoing count 1 -> 0 : unpreserve
//!  freeze / snapshot     : serialize (the bytes stored in the image)
//!  after restore         : retrieve(data), on first access (FlbRef::incoming) or at the last finish
//!  incoming count -> 0   : finish
//! ```
//!
//! Methods take `&self`: an FLB is shared (`Arc`) with the handlers that use it, which keep
//! their own per-file bookkeeping inside it.

use crate::handler::HandlerError;

/// One FLB. Mirrors the kernel's `liveupdate_flb_ops`.
pub trait Flb: Send + Sync + std::fmt::Debug {
    /// The versioned compatible string, 1..=47 bytes, unique among FLBs.
    fn compatible(&self) -> &str;

    /// Required. The first dependent file is being preserved (outgoing count 0 -> 1). A failure
    /// fails that preserve.
    fn preserve(&self) -> Result<(), HandlerError>;

    /// Required, cannot fail. The last dependent outgoing file was unpreserved (1 -> 0).
    fn unpreserve(&self);

    /// Required. The FLB's outgoing state as bytes, written into the image when the engine
    /// freezes or snapshots. Called only while the outgoing count is above zero.
    fn serialize(&self) -> Vec<u8>;

    /// Required. The first access after a restore (or, if nobody asked, just before
    /// [`finish`](Self::finish)): rebuild the incoming state from `data`.
    fn retrieve(&self, data: &[u8]) -> Result<(), HandlerError>;

    /// Required, cannot fail. The last dependent incoming file was finished.
    fn finish(&self);

    /// Optional. For an orchestrator upgrade, which carries live state to a new luod binary:
    /// the incoming half (after [`retrieve`](Self::retrieve)) as bytes. The new binary hands
    /// them to `retrieve`. The default carries nothing.
    fn serialize_incoming(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Optional. For an orchestrator upgrade: rebuild the outgoing half in the new binary from
    /// what [`serialize`](Self::serialize) wrote in the old one. Runs instead of `preserve`.
    fn restore_outgoing(&self, data: &[u8]) -> Result<(), HandlerError> {
        let _ = data;
        Ok(())
    }
}
