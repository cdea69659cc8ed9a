//! KEXEC: the host kernel's live update, through the kernel backend ([`crate::liveupdate`]).

use luo_abi::Errno;
use luo_abi::wire::{
    KEXEC_CANCEL, KEXEC_CHECK, KEXEC_DROP_UNPRESERVABLE, KEXEC_FLAGS, KEXEC_LIST_MAX,
    KEXEC_NO_EXEC, KEXEC_STATE_FORWARDED, KEXEC_STATE_IDLE, KexecEntry, KexecReply, KexecRequest,
};
use tracing::{info, warn};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use super::{Reply, Server};
use crate::liveupdate::{self, Report};

/// The request's flags, or why they are refused.
pub(crate) fn parse(arg: &[u8]) -> Result<u32, Reply> {
    let req = KexecRequest::read_from_bytes(arg)
        .map_err(|_| Reply::err_msg(Errno::EINVAL, "KEXEC takes an 8-byte argument"))?;
    let flags = req.flags.get();
    if flags & !KEXEC_FLAGS != 0 || req.reserved.get() != 0 {
        return Err(Reply::err_msg(Errno::EINVAL, "Unknown KEXEC flags"));
    }
    if flags & KEXEC_CANCEL != 0 && flags != KEXEC_CANCEL {
        return Err(Reply::err_msg(
            Errno::EINVAL,
            "A cancel takes no other flag",
        ));
    }
    Ok(flags)
}

/// The reply: counts, then the first files that cannot cross.
fn report_reply(report: &Report, forwarded: bool) -> Reply {
    let listed = report.lost.len().min(KEXEC_LIST_MAX);
    let head = KexecReply {
        sessions: U64::new(report.sessions),
        preservable: U64::new(report.preservable),
        preservable_bytes: U64::new(report.preservable_bytes),
        unpreservable: U64::new(report.lost.len() as u64),
        state: U32::new(if forwarded {
            KEXEC_STATE_FORWARDED
        } else {
            KEXEC_STATE_IDLE
        }),
        listed: U32::new(listed as u32),
    };
    let mut out = head.as_bytes().to_vec();
    for l in &report.lost[..listed] {
        let mut session = [0u8; 64];
        let n = l.session.len().min(63);
        session[..n].copy_from_slice(&l.session[..n]);
        let e = KexecEntry {
            owner: U32::new(l.owner),
            kind: U32::new(l.kind),
            token: U64::new(l.token),
            bytes: U64::new(l.bytes),
            session,
        };
        out.extend_from_slice(e.as_bytes());
    }
    Reply::ok(out)
}

impl Server {
    /// Runs KEXEC with `flags` for the request `id` of connection `key`, and answers it. A
    /// forward that goes on to the kexec answers first, then kexecs.
    pub(crate) fn kexec(&mut self, key: u64, id: u64, flags: u32) {
        let (reply, exec) = self.kexec_reply(flags);
        let ok = reply.errno == 0;
        self.send_reply(key, id, reply);
        if ok && exec {
            info!("kexec: every session is in the kernel; rebooting into the loaded kernel");
            if let Err(e) = liveupdate::kexec_now() {
                // The kernel refused (its freeze of a session failed, say): every session is
                // still preserved in the kernel; luod stays forwarded until a cancel.
                warn!(error = %e, "the kexec failed; luod stays frozen and forwarded (luoctl kexec --cancel undoes it)");
            }
        }
    }

    fn kexec_reply(&mut self, flags: u32) -> (Reply, bool) {
        let Some(backend) = self.liveupdate.as_mut() else {
            return (
                Reply::err_msg(
                    Errno::ENODEV,
                    "luod has no kernel backend: this kernel has no /dev/liveupdate (or luod \
                     runs with --liveupdate none)",
                ),
                false,
            );
        };
        if flags & KEXEC_CANCEL != 0 {
            if !backend.is_forwarded() {
                return (
                    Reply::err_msg(Errno::EINVAL, "Nothing is forwarded to cancel"),
                    false,
                );
            }
            backend.cancel();
            self.engine.thaw();
            info!("kexec cancelled: the kernel sessions are closed, every session thawed");
            return (report_reply(&liveupdate::check(&self.engine), false), false);
        }
        let forwarded = backend.is_forwarded();
        let report = liveupdate::check(&self.engine);
        if flags & KEXEC_CHECK != 0 {
            return (report_reply(&report, forwarded), false);
        }
        if forwarded {
            return (
                Reply::err_msg(
                    Errno::EBUSY,
                    "Every session is already forwarded and waits for the kexec (luoctl kexec \
                     --cancel undoes it)",
                ),
                false,
            );
        }
        if self.migration.is_some() || self.staging.is_some() {
            return (
                Reply::err_msg(Errno::EBUSY, "A migration or an upgrade is in progress"),
                false,
            );
        }
        let exec = flags & KEXEC_NO_EXEC == 0;
        if exec && !liveupdate::kexec_loaded() {
            return (
                Reply::err_msg(
                    Errno::ENOEXEC,
                    "No kernel is loaded for kexec: load one first (kexec -s -l KERNEL \
                     --initrd=... --reuse-cmdline), or forward with --no-exec and kexec yourself",
                ),
                false,
            );
        }
        if !report.lost.is_empty() && flags & KEXEC_DROP_UNPRESERVABLE == 0 {
            let first = &report.lost[0];
            return (
                Reply::err_msg(
                    Errno::EOPNOTSUPP,
                    &format!(
                        "{} preserved files cannot cross a kexec of this kernel (the first: token \
                         {} of uid {}'s session {:?}, a {}); luoctl kexec --check lists them, \
                         --drop-unpreservable loses them; nothing changed",
                        report.lost.len(),
                        first.token,
                        first.owner,
                        String::from_utf8_lossy(&first.session),
                        luo_client::kexec_kind_name(first.kind)
                    ),
                ),
                false,
            );
        }
        if let Err(e) = self.engine.freeze() {
            return (
                Reply::err_msg(
                    e.errno(),
                    &format!("Cannot freeze the sessions: {e}; nothing changed"),
                ),
                false,
            );
        }
        let backend = self.liveupdate.as_mut().expect("checked above");
        match liveupdate::forward(backend, &self.engine) {
            Ok(report) => (report_reply(&report, true), exec),
            Err(refusal) => {
                self.engine.thaw();
                (
                    Reply::err_msg(
                        refusal.errno,
                        &format!("{}; nothing changed", refusal.message),
                    ),
                    false,
                )
            }
        }
    }

    /// The luod session `id` is about to be finished or closed: what the kernel backend needs
    /// to know of it afterwards (its owner and name, if it is incoming).
    pub(crate) fn incoming_name(&self, id: luo_core::SessionId) -> Option<(u32, Vec<u8>)> {
        let backend = self.liveupdate.as_ref()?;
        if backend.incoming_count() == 0 {
            return None;
        }
        let info = self.engine.session_info(id)?;
        matches!(info.direction, luo_core::Direction::Incoming { .. })
            .then_some((info.owner, info.name))
    }

    /// The incoming luod session `owner`/`name` was finished: so is its kernel session.
    pub(crate) fn incoming_finished(&mut self, name: Option<(u32, Vec<u8>)>) {
        if let (Some((owner, name)), Some(backend)) = (name, self.liveupdate.as_mut()) {
            backend.finished(owner, &name);
        }
    }
}
