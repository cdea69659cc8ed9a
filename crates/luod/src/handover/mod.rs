//! Handing the whole daemon to a successor process: the orchestrator upgrade and the reboot
//! emulation share one mechanism.
//!
//! ```text
//!  old server                                        successor (new binary)
//!  ----------                                        ----------
//!  write image (sessions, fds, connections)
//!  seal it in a memfd
//!  fork; in the child clear close-on-exec on
//!  exactly the descriptors the image lists, the
//!  image memfd and one end of a socket pair;
//!  exec `luod --takeover FD`                     --> "IMAGE <memfd number>" arrives;
//!  (upgrade: back to serving clients)                validate the image; adopt every listed
//!                                                    descriptor (number and type checked),
//!                                                    close any other; restore the engine,
//!                                                    rebuild connections
//!                                  <-- "READY" (or the reason it refuses, then exits)
//!  upgrade: has anything the image records
//!  changed since it was written? if so, kill
//!  the successor and start another one (at most
//!  three rounds, then stop and copy)
//!  send "GO"; answer the requester; exit         --> start serving
//! ```
//!
//! No descriptor is copied or sent: they are inherited across the exec, under the numbers the
//! image's fd table records.
//!
//! **Preparing while serving.** For an upgrade the old server does not wait for the successor:
//! after the fork it goes back to its loop and keeps answering while the successor adopts,
//! validates and restores (the slow part: tens of milliseconds with thousands of descriptors).
//! Every request that is not read-only, and every connection opened or closed, moves
//! [`Server::epoch`]; the successor's "READY" is taken only if the epoch is still the one the
//! image was written at, so the successor is an exact copy of the server at the moment it
//! takes over, and the pause clients see is the "GO" exchange alone. Otherwise the successor
//! is killed and another one prepares from a new image; after three such rounds the old server
//! stops serving until the next successor is ready (stop and copy), which always converges.
//! A reboot is always stop and copy: it freezes every session first.
//!
//! Until "GO" the old server owns everything: if the successor cannot be started, refuses the
//! image, or dies, the old one unfreezes (for a reboot) and keeps serving. The successor serves
//! nothing until "GO"; if the old server goes away without sending it, the successor exits.

/// Image part holding the daemon's own state.
pub const DAEMON_PART: &str = "luod";
/// How long the old server waits for the successor's verdict.
pub(crate) const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

#[allow(unsafe_code)] // Adopting inherited descriptors by number, and close_range.
mod adopt;
mod image;
mod reboot;
mod records;
#[allow(unsafe_code)] // Forking the successor and clearing close-on-exec in the child.
mod spawn;
mod upgrade;

pub use adopt::{Recovery, adopt_inherited, recover, send_again, take_over, wait_go};
pub(crate) use image::daemon_image;
pub use reboot::{reboot, release_successor};
pub(crate) use records::{ConnState, DaemonState};
pub use spawn::Successor;
pub use upgrade::{Staging, begin_upgrade, on_successor, on_timeout, requester_gone};
