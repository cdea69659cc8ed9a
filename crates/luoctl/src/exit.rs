//! luoctl's exit statuses, and what a failed call becomes: the status, the message for the
//! operator, and the JSON error document.
//!
//! Every status luoctl exits with is an [`Exit`]; [`Exit::ALL`] is the one list that the help
//! text, the man page and the tests read. A [`Failure`] is made from a [`luo_client::Error`]
//! by [`Failure::of`], which alone decides which status an error gets.

use std::path::Path;

use luo_abi::Errno;
use luo_client::ErrorKind;

use crate::json;

/// An exit status of luoctl.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The command did what was asked.
    Ok = 0,
    /// the operation failed: luod refused it (its errno and reason are printed), or luoctl could not write its output.
    Failed = 1,
    /// The command line is wrong (clap's status for a usage error).
    Usage = 2,
    /// luod cannot be reached at the socket: no luod runs there, or the connection was lost.
    Unreachable = 3,
    /// Permission denied: the socket does not let this user connect, or luod allows the
    /// operation to root only.
    PermissionDenied = 4,
    /// The socket is not luod's: another user serves it, or its directory is not private.
    /// Nothing was sent.
    Untrusted = 5,
}

impl Exit {
    /// Every status, in order.
    pub const ALL: [Exit; 6] = [
        Exit::Ok,
        Exit::Failed,
        Exit::Usage,
        Exit::Unreachable,
        Exit::PermissionDenied,
        Exit::Untrusted,
    ];

    /// The status's number.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Its name in the JSON error document (`"kind"`).
    pub fn name(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Failed => "failed",
            Exit::Usage => "usage",
            Exit::Unreachable => "unreachable",
            Exit::PermissionDenied => "permission-denied",
            Exit::Untrusted => "untrusted-socket",
        }
    }

    /// One line on what it means, for the help text and the man page.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "success",
            Exit::Failed => {
                "the operation failed: luod refused it (its errno and reason are printed), or luoctl could not write its output"
            }
            Exit::Usage => "the command line is wrong",
            Exit::Unreachable => {
                "luod cannot be reached: no luod runs at the socket, or the connection was lost"
            }
            Exit::PermissionDenied => {
                "permission denied: the socket does not let you connect, or the operation is \
                 root's"
            }
            Exit::Untrusted => {
                "the socket is not luod's: another user serves it, or its directory is not \
                 private; nothing was sent"
            }
        }
    }

    /// The exit statuses as `luoctl --help` ends: a heading and one line per status.
    pub fn help() -> String {
        let mut s = String::from("Exit status:\n");
        for e in Exit::ALL {
            s.push_str(&format!("  {}  {}\n", e.code(), e.meaning()));
        }
        s
    }
}

/// A command that did not succeed: how luoctl exits, and what it says.
#[derive(Debug)]
pub struct Failure {
    /// The exit status.
    pub exit: Exit,
    /// The operation that failed (`"connect"`, `"status"`, ...).
    pub op: &'static str,
    /// The errno, if the failure has one.
    pub errno: Option<Errno>,
    /// luod's own explanation, if it gave one.
    pub reason: Option<String>,
    /// What luoctl prints on standard error: one line, then hints on lines of their own.
    pub lines: Vec<String>,
}

impl Failure {
    /// A failure of luoctl itself (writing a file, an argument clap cannot check).
    pub fn local(exit: Exit, op: &'static str, line: String) -> Failure {
        Failure {
            exit,
            op,
            errno: None,
            reason: None,
            lines: vec![line],
        }
    }

    /// What `e`, from a call to luod at `socket`, becomes.
    pub fn of(e: &luo_client::Error, socket: &Path) -> Failure {
        let mut f = Failure {
            exit: Exit::Failed,
            op: e.op,
            errno: Some(e.errno),
            reason: e.message.clone(),
            lines: Vec::new(),
        };
        if !matches!(e.kind, ErrorKind::Call) {
            // The client refused the socket (UntrustedServer, UnsafeDirectory, or a kind added
            // later): its message names the socket, its server or directory, and the way out.
            f.exit = Exit::Untrusted;
            f.lines.push(e.to_string());
            return f;
        }
        let raw = e.errno.raw();
        let path = socket.display();
        if e.op == "connect" {
            if raw == Errno::EACCES.raw() {
                f.exit = Exit::PermissionDenied;
                f.lines = permission_denied(socket);
                return f;
            }
            f.exit = Exit::Unreachable;
            let start = start_hint(socket);
            let (what, hint) = if raw == Errno::ENOENT.raw() {
                ("there is no socket at that path", start)
            } else if raw == rustix::io::Errno::CONNREFUSED.raw_os_error() {
                (
                    "the socket is there but nothing listens on it (luod stopped or was killed)",
                    start,
                )
            } else if raw == rustix::io::Errno::PROTOTYPE.raw_os_error()
                || raw == rustix::io::Errno::NOTSOCK.raw_os_error()
            {
                (
                    "it is not a socket luod serves",
                    "name luod's socket with --socket or LUOD_SOCKET".to_owned(),
                )
            } else {
                ("the connection failed", start)
            };
            f.lines.push(format!(
                "luod is not running at {path}: {what} ({})",
                errno_text(e.errno)
            ));
            f.lines.push(hint);
            return f;
        }
        if raw == Errno::ECONNRESET.raw() || raw == rustix::io::Errno::PIPE.raw_os_error() {
            f.exit = Exit::Unreachable;
            f.lines.push(format!(
                "lost the connection to luod at {path} during {} ({}): luod stopped",
                e.op,
                errno_text(e.errno)
            ));
            return f;
        }
        if raw == Errno::EPERM.raw() || raw == Errno::EACCES.raw() {
            f.exit = Exit::PermissionDenied;
        }
        f.lines.push(e.to_string());
        f
    }

    /// The JSON error document: `{"error":{...}}`.
    pub fn json(&self) -> String {
        json::Object::new()
            .raw("error", &self.json_fields())
            .finish()
    }

    /// The error object alone (the value of `"error"`).
    pub fn json_fields(&self) -> String {
        let mut o = json::Object::new()
            .uint("exit", self.exit.code().into())
            .str("kind", self.exit.name())
            .str("op", self.op);
        o = match self.errno {
            Some(e) => o
                .int("errno", e.raw().into())
                .opt_str("errno_name", errno_name(e)),
            None => o.null("errno").null("errno_name"),
        };
        o.opt_str("reason", self.reason.as_deref())
            .str("message", &self.lines.join("; "))
            .finish()
    }
}

/// How to start luod on `socket`: plain `luod` if it is luod's default for this user.
fn start_hint(socket: &Path) -> String {
    if socket == luo_client::SocketDir::of_caller().socket() {
        "start it with `luod`, or name another socket with --socket or LUOD_SOCKET".to_owned()
    } else {
        format!(
            "start it with `luod --socket {}`, or name another socket with --socket or LUOD_SOCKET",
            socket.display()
        )
    }
}

/// The lines for `EACCES` on connect: which file refused this user, and the ways out.
fn permission_denied(socket: &Path) -> Vec<String> {
    let uid = rustix::process::geteuid().as_raw();
    let path = socket.display();
    // A directory on the way that this user cannot search hides the socket.
    let blocked = socket
        .ancestors()
        .skip(1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find(|dir| {
            !dir.as_os_str().is_empty()
                && rustix::fs::access(*dir, rustix::fs::Access::EXEC_OK).is_err()
        });
    let first = match (blocked, rustix::fs::stat(socket)) {
        (Some(dir), _) => format!(
            "permission denied: uid {uid} may not connect to {path}: the directory {} does \
             not let it in",
            dir.display()
        ),
        (None, Ok(st)) => format!(
            "permission denied: uid {uid} may not connect to {path} (mode {:04o}, owned by \
             uid {})",
            st.st_mode & 0o7777,
            st.st_uid
        ),
        (None, Err(_)) => format!("permission denied: uid {uid} may not connect to {path}"),
    };
    vec![
        first,
        "run luoctl as root or as the socket's owner, or start luod with --socket-mode 0666 \
         to serve every user (each in a namespace of its own)"
            .to_owned(),
    ]
}

/// The symbolic name of an errno, where luoctl knows it.
pub fn errno_name(e: Errno) -> Option<&'static str> {
    use rustix::io::Errno as E;
    const MORE: [(E, &str); 7] = [
        (E::CONNREFUSED, "ECONNREFUSED"),
        (E::PIPE, "EPIPE"),
        (E::NOTDIR, "ENOTDIR"),
        (E::LOOP, "ELOOP"),
        (E::NAMETOOLONG, "ENAMETOOLONG"),
        (E::NOTSOCK, "ENOTSOCK"),
        (E::PROTOTYPE, "EPROTOTYPE"),
    ];
    e.name().or_else(|| {
        MORE.iter()
            .find(|(n, _)| n.raw_os_error() == e.raw())
            .map(|&(_, name)| name)
    })
}

/// `ENOENT`, or the number if luoctl has no name for it.
fn errno_text(e: Errno) -> String {
    errno_name(e).map_or_else(|| format!("errno {}", e.raw()), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_numbered_in_order_and_usage_is_clap_s() {
        for (i, e) in Exit::ALL.iter().enumerate() {
            assert_eq!(usize::from(e.code()), i);
        }
        // clap exits with 2 on a usage error; luoctl's own usage errors must agree.
        let err = clap::Command::new("x")
            .try_get_matches_from(["x", "--nope"])
            .expect_err("usage error");
        assert_eq!(err.exit_code(), i32::from(Exit::Usage.code()));
    }

    #[test]
    fn errno_names_cover_the_connect_errors() {
        assert_eq!(errno_name(Errno(111)), Some("ECONNREFUSED"));
        assert_eq!(errno_name(Errno::ENOENT), Some("ENOENT"));
        assert_eq!(errno_name(Errno(4242)), None);
        assert_eq!(errno_text(Errno(4242)), "errno 4242");
    }
}
