//! Descriptor budgets: how many of luod's descriptors each uid may hold, so that no user can
//! take the descriptor table from the others.
//!
//! luod may hold `RLIMIT_NOFILE` descriptors (its *limit*). [`FD_SPARE`] of them are never
//! lent to anyone: luod's own descriptors (stdio, epoll, the listener, the lock, the signal
//! pipe, the spare of [`crate::listener`]) and the few it needs for a moment (a descriptor being
//! received before it is refused, an upgrade's image and channel). The rest is the *budget*,
//! and every descriptor in it is charged to a uid:
//!
//! - one per connection of the uid (control, device, session or detached);
//! - one per file the uid preserved, and one more per such file retrieved and not finished
//!   ([`luo_core::Engine::fds_held_by`]);
//! - one per descriptor in a reply waiting in an outbox of one of the uid's connections.
//!
//! ```text
//!  0                                                                    limit
//!  |<------------------------------- budget ------------------------>|<- FD_SPARE ->|
//!  |<------------- every uid: the pool -------------->|<- reserve -->|   luod's own
//!  |<- one uid other than root: at most its share ->|
//! ```
//!
//! Root and luod's own uid, the *administrators*, may use the whole budget. Every other uid
//! may hold at most its *share* (`--max-fds`, default a quarter of the budget), and all of
//! them together at most the budget less the *reserve* (`--fd-reserve`, default a quarter of
//! the budget), which only administrators can use. The defaults leave room for three users at
//! their full share beside root, and leave root at least what any single other user may ever
//! hold.
//!
//! A request that would go over (CREATE_SESSION and RETRIEVE_SESSION need two descriptors for
//! a moment, PRESERVE_FD one) is refused with `EMFILE` and a [`Refusal`] saying which bound it
//! hit; RETRIEVE_FD is held to the pool and the budget only, as its file was charged to the
//! uid when it was preserved, and REPLACE_FD, which leaves the uid holding as many as before,
//! to the budget only. A connection of a uid over its share is closed as soon as it is
//! accepted ([`crate::listener`]). Connections of administrators are never refused while the
//! descriptor table has room: whatever the other users do, root can connect, ask for STATUS
//! and upgrade.

use std::collections::HashMap;
use std::fmt;

use luo_abi::uapi;

use crate::server::Server;

/// Descriptors of luod's limit that are never charged to a uid (see the module doc).
pub const FD_SPARE: u64 = 64;

/// The budget's settings (`--max-fds`, `--fd-reserve`, `[limits] fds`, `fd_reserve`); `None`
/// is the default, a quarter of the budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdSettings {
    /// Most descriptors one uid other than root and luod's own may hold.
    pub share: Option<u64>,
    /// Descriptors only root and luod's own uid may use.
    pub reserve: Option<u64>,
}

/// The bounds in force, from luod's limit and the [`FdSettings`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Descriptors that may be charged to uids in all: the limit less [`FD_SPARE`].
    pub total: u64,
    /// Most descriptors one non-administrator uid may hold.
    pub share: u64,
    /// Descriptors of the total that only administrators may use.
    pub reserve: u64,
    /// luod's own uid, an administrator besides root.
    pub own_uid: u32,
}

/// Which bound a request would cross.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The uid holds its share.
    Share {
        /// The uid.
        uid: u32,
        /// What it holds.
        held: u64,
        /// Its share.
        share: u64,
    },
    /// Users other than root hold everything but the reserve.
    Pool,
    /// The budget is spent.
    Full,
    /// luod's descriptor table has no room, whatever the budget says.
    Table,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Share { uid, held, share } => write!(
                f,
                "Descriptor budget of uid {uid} exhausted: it holds {held} of its share of \
                 {share} (connections and preserved files; luod --max-fds)"
            ),
            Refusal::Pool => f.write_str(
                "luod's descriptor budget for users other than root is exhausted: the rest is \
                 root's reserve (luod --fd-reserve)",
            ),
            Refusal::Full => f.write_str("luod's descriptor budget is exhausted"),
            Refusal::Table => f.write_str("luod's descriptor table is full"),
        }
    }
}

/// What a check holds a uid to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Its share, the pool and the budget: for anything that makes the uid hold more.
    Share,
    /// The pool and the budget only: for RETRIEVE_FD, whose file the uid was charged for.
    Pool,
    /// The budget only: for REPLACE_FD, after which the uid holds as many as before.
    Budget,
}

impl Budget {
    /// The bounds for a luod whose descriptor limit is `fd_limit`, running as `own_uid`.
    pub fn new(fd_limit: u64, settings: FdSettings, own_uid: u32) -> Budget {
        let total = fd_limit.saturating_sub(FD_SPARE);
        Budget {
            total,
            share: settings.share.unwrap_or(total / 4),
            reserve: settings.reserve.unwrap_or(total / 4).min(total),
            own_uid,
        }
    }

    /// Root and luod's own uid.
    pub fn is_admin(&self, uid: u32) -> bool {
        uid == 0 || uid == self.own_uid
    }

    /// Whether `uid` may hold `n` descriptors more, given what is held now.
    pub fn check(&self, uid: u32, n: u64, scope: Scope, held: Held) -> Result<(), Refusal> {
        if !self.is_admin(uid) && scope != Scope::Budget {
            if scope == Scope::Share && held.uid + n > self.share {
                return Err(Refusal::Share {
                    uid,
                    held: held.uid,
                    share: self.share,
                });
            }
            if held.others + n > self.total - self.reserve {
                return Err(Refusal::Pool);
            }
        }
        if held.total + n > self.total {
            return Err(Refusal::Full);
        }
        Ok(())
    }
}

/// Descriptors held now, as a check sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// By the uid asking.
    pub uid: u64,
    /// By every uid but the administrators.
    pub others: u64,
    /// By every uid.
    pub total: u64,
}

/// The descriptors charged to each uid that the engine does not count: connections, and the
/// descriptors of replies waiting in outboxes.
#[derive(Debug, Default)]
pub struct Tally {
    by_uid: HashMap<u32, u64>,
    total: u64,
}

impl Tally {
    /// `uid` holds `n` more.
    pub fn add(&mut self, uid: u32, n: u64) {
        *self.by_uid.entry(uid).or_default() += n;
        self.total += n;
    }

    /// `uid` holds `n` fewer.
    pub fn sub(&mut self, uid: u32, n: u64) {
        if let Some(held) = self.by_uid.get_mut(&uid) {
            let n = n.min(*held);
            *held -= n;
            self.total -= n;
            if *held == 0 {
                self.by_uid.remove(&uid);
            }
        }
    }

    /// What `uid` holds.
    pub fn get(&self, uid: u32) -> u64 {
        self.by_uid.get(&uid).copied().unwrap_or(0)
    }

    /// What every uid holds together.
    pub fn total(&self) -> u64 {
        self.total
    }
}

impl Server {
    /// What is held, from `uid`'s point of view.
    pub fn held(&self, uid: u32) -> Held {
        let of = |u: u32| self.tally.get(u) + self.engine.fds_held_by(u);
        let total = self.tally.total() + self.engine.fds_held();
        let own = self.budget.own_uid;
        let admins = of(0) + if own == 0 { 0 } else { of(own) };
        Held {
            uid: of(uid),
            others: total.saturating_sub(admins),
            total,
        }
    }

    /// Whether `uid` may hold `n` descriptors more.
    pub fn may_hold(&self, uid: u32, n: u64, scope: Scope) -> Result<(), Refusal> {
        self.budget.check(uid, n, scope, self.held(uid))
    }

    /// The descriptors kernel operation `op` needs, and the scope it is checked in.
    pub fn fds_needed(op: u32) -> Option<(u64, Scope)> {
        match op {
            // Both ends of the new session's socket pair, until the client's end is sent.
            uapi::LIVEUPDATE_IOCTL_CREATE_SESSION | uapi::LIVEUPDATE_IOCTL_RETRIEVE_SESSION => {
                Some((2, Scope::Share))
            }
            uapi::LIVEUPDATE_SESSION_PRESERVE_FD => Some((1, Scope::Share)),
            uapi::LIVEUPDATE_SESSION_RETRIEVE_FD => Some((1, Scope::Pool)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(uid: u64, others: u64, total: u64) -> Held {
        Held { uid, others, total }
    }

    #[test]
    fn defaults_are_a_quarter_of_the_budget_each() {
        let b = Budget::new(20_000, FdSettings::default(), 0);
        assert_eq!((b.total, b.share, b.reserve), (19_936, 4_984, 4_984));
        let b = Budget::new(10, FdSettings::default(), 0);
        assert_eq!((b.total, b.share, b.reserve), (0, 0, 0));
        let set = FdSettings {
            share: Some(100),
            reserve: Some(1_000_000),
        };
        let b = Budget::new(1064, set, 0);
        assert_eq!((b.total, b.share, b.reserve), (1000, 100, 1000));
    }

    #[test]
    fn a_user_is_held_to_its_share_and_never_reaches_the_reserve() {
        let b = Budget::new(1064, FdSettings::default(), 1000); // total 1000, 250 each
        assert_eq!(b.check(7, 1, Scope::Share, held(249, 249, 249)), Ok(()));
        assert_eq!(
            b.check(7, 1, Scope::Share, held(250, 250, 250)),
            Err(Refusal::Share {
                uid: 7,
                held: 250,
                share: 250
            })
        );
        // Two descriptors for a session: refused with one left.
        assert!(b.check(7, 2, Scope::Share, held(249, 249, 249)).is_err());
        // Three users at their share: the fourth finds only the reserve.
        assert_eq!(
            b.check(8, 1, Scope::Share, held(0, 750, 750)),
            Err(Refusal::Pool)
        );
        // RETRIEVE_FD is not held to the share, but to the pool.
        assert_eq!(b.check(7, 1, Scope::Pool, held(250, 250, 250)), Ok(()));
        // REPLACE_FD only needs room in the budget.
        assert_eq!(b.check(7, 1, Scope::Budget, held(250, 750, 750)), Ok(()));
        assert_eq!(
            b.check(7, 1, Scope::Budget, held(250, 750, 1000)),
            Err(Refusal::Full)
        );
        assert_eq!(
            b.check(7, 1, Scope::Pool, held(500, 750, 750)),
            Err(Refusal::Pool)
        );
    }

    #[test]
    fn administrators_use_the_reserve_and_nothing_more() {
        let b = Budget::new(1064, FdSettings::default(), 1000);
        for admin in [0, 1000] {
            assert!(b.is_admin(admin));
            assert_eq!(b.check(admin, 2, Scope::Share, held(600, 750, 998)), Ok(()));
            assert_eq!(
                b.check(admin, 2, Scope::Share, held(600, 750, 999)),
                Err(Refusal::Full)
            );
        }
        assert!(!b.is_admin(7));
    }

    #[test]
    fn the_tally_forgets_a_uid_that_holds_nothing() {
        let mut t = Tally::default();
        t.add(5, 2);
        t.add(6, 1);
        assert_eq!((t.get(5), t.get(6), t.total()), (2, 1, 3));
        t.sub(5, 3);
        assert_eq!((t.get(5), t.total()), (0, 1));
        assert!(!t.by_uid.contains_key(&5));
        t.sub(9, 1);
        assert_eq!(t.total(), 1);
    }
}
