//! KEXEC: the host kernel's live update, through the kernel backend ([`crate::liveupdate`]).

use luo_abi::Errno;
use luo_abi::wire::{
    KEXEC_CANCEL, KEXEC_CHECK, KEXEC_CONVERT, KEXEC_DROP_UNPRESERVABLE, KEXEC_FLAGS,
    KEXEC_KIND_HUGETLB, KEXEC_LIST_MAX, KEXEC_NO_EXEC, KEXEC_STATE_FORWARDED, KEXEC_STATE_IDLE,
    KexecEntry, KexecReply, KexecRequest,
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
            return (
                report_reply(&liveupdate::check(&self.engine, false), false),
                false,
            );
        }
        let forwarded = backend.is_forwarded();
        let convert = flags & KEXEC_CONVERT != 0;
        let report = liveupdate::check(&self.engine, convert && !forwarded);
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
        if convert && let Err(reply) = self.convert_hugetlb() {
            return (reply, false);
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

    /// `--convert`: every crossing hugetlb memfd re-backed onto shmem, one by one. A failure
    /// stops there: the files converted so far stay converted (their contents are the same,
    /// on shmem), the rest untouched, and nothing is forwarded.
    fn convert_hugetlb(&mut self) -> Result<(), Reply> {
        let todo: Vec<_> = liveupdate::check(&self.engine, false)
            .lost
            .into_iter()
            .filter(|l| l.kind == KEXEC_KIND_HUGETLB)
            .collect();
        let (mut files, mut bytes, mut took) = (0u64, 0u64, std::time::Duration::ZERO);
        for l in &todo {
            match crate::migrate::convert_now(self, l.id, l.token) {
                Ok((b, t)) => {
                    files += 1;
                    bytes += b;
                    took += t;
                }
                Err(reply) => {
                    if files > 0 {
                        self.commit_changes(None);
                    }
                    let why = String::from_utf8_lossy(&reply.arg).into_owned();
                    warn!(
                        token = l.token,
                        owner = l.owner,
                        session = %String::from_utf8_lossy(&l.session),
                        converted = files,
                        "kexec --convert failed: {why}"
                    );
                    return Err(Reply::err_msg(
                        Errno(reply.errno),
                        &format!(
                            "Cannot re-back token {} of uid {}'s session {:?} onto shmem ({why}); \
                             {files} hugetlb memfds were re-backed before it, nothing was \
                             forwarded",
                            l.token,
                            l.owner,
                            String::from_utf8_lossy(&l.session)
                        ),
                    ));
                }
            }
        }
        if files > 0 {
            // The swaps are durable before anything else happens: a server that dies from
            // here on comes back with the shmem files (and the old ones closed).
            self.commit_changes(None);
            self.metrics_fold_copy();
            info!(
                files,
                bytes,
                copy_ms = took.as_secs_f64() * 1e3,
                "kexec --convert: hugetlb memfds re-backed onto shmem"
            );
        }
        Ok(())
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
