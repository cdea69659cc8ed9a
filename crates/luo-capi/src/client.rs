//! `struct luo_client`: a connection to luod, its status, its session list, and the device
//! through which sessions are created and retrieved.
//!
//! A client holds a control connection (status, list) from `luo_connect` on, and the caller's
//! device connection — the userspace `/dev/liveupdate`, exclusive per uid — from its first
//! `luo_session_create` or `luo_session_retrieve` until `luo_close`. The sessions it made
//! are connections of their own and outlive it.

use std::ffi::{OsStr, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use luo_abi::uapi::SESSION_NAME_MAX;
use luo_abi::wire;
use luo_client::{Control, Device};

use crate::arg::{self, copy_c_string};
use crate::error::{Error, guard, guard_void};
use crate::header::{CType, Opaque, Typedef};
use crate::session::LuoSession;
use crate::{c_constants, c_functions, c_structs};

/// `struct luo_client`.
#[derive(Debug)]
pub struct LuoClient {
    state: Mutex<ClientState>,
}

#[derive(Debug)]
struct ClientState {
    socket: PathBuf,
    control: Control,
    /// Opened by the first session call, kept until the client is closed.
    device: Option<Device>,
}

impl LuoClient {
    /// Connects to luod at `socket`.
    pub fn connect(socket: &Path) -> Result<LuoClient, Error> {
        Ok(LuoClient {
            state: Mutex::new(ClientState {
                socket: socket.to_path_buf(),
                control: Control::connect_at(socket)?,
                device: None,
            }),
        })
    }

    /// The client's state, for one call. A call that panicked (it cannot, but would poison
    /// the lock) left the connections as they were: each request is one message.
    fn lock(&self) -> MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn session(&self, retrieve: bool, name: &str) -> Result<LuoSession, Error> {
        let mut state = self.lock();
        let device = state.device()?;
        let session = if retrieve {
            device.retrieve_session(name)
        } else {
            device.create_session(name)
        };
        let session = session.map_err(Error::session(name))?;
        Ok(LuoSession::new(session))
    }
}

impl ClientState {
    fn device(&mut self) -> Result<&Device, Error> {
        let device = match self.device.take() {
            Some(device) => device,
            None => Device::open_at(&self.socket)?,
        };
        Ok(self.device.insert(device))
    }
}

impl CType for LuoClient {
    fn c_type() -> String {
        "struct luo_client".to_owned()
    }
}

pub(crate) const OPAQUE: Opaque = Opaque {
    doc: &[
        " A connection to luod: made by luo_connect(), closed by luo_close().",
        "",
        " It answers luo_status() and luo_list() at once. The first luo_session_create() or",
        " luo_session_retrieve() also opens the caller's device, the userspace",
        " /dev/liveupdate, of which each uid has one at a time (-EBUSY while another client",
        " of the uid, in this process or another, holds it); the client keeps it until",
        " luo_close(). Sessions outlive their client: close the client once its sessions are",
        " made, and a successor can open the device while this process still runs.",
    ],
    tag: "luo_client",
};

c_constants! { CONSTANTS;
    /// The longest session name, in bytes, without its NUL.
    pub const LUO_SESSION_NAME_MAX: usize = SESSION_NAME_MAX;
    /// luo_session_info.flags: the session is incoming (handed over), not outgoing.
    pub const LUO_SESSION_INCOMING: u32 = wire::LIST_INCOMING;
    /// luo_session_info.flags: incoming and retrieved by a successor.
    pub const LUO_SESSION_RETRIEVED: u32 = wire::LIST_RETRIEVED;
    /// luo_session_info.flags: incoming and finished.
    pub const LUO_SESSION_FINISHED: u32 = wire::LIST_FINISHED;
    /// luo_status.last_upgrade_flags: the last upgrade of luod fell back to stop and copy.
    pub const LUO_UPGRADE_STOP_AND_COPY: u32 = wire::UPGRADE_STOP_AND_COPY;
}

c_structs! { STRUCTS;
    /// luod's state, as `luoctl status` shows it, filled by luo_status().
    ///
    /// Set size to sizeof(struct luo_status) first: `struct luo_status st = { .size =
    /// sizeof st };`. A library that knows more fields than the caller fills only the
    /// caller's size; one that knows fewer zeroes the rest. On return, size is the number
    /// of bytes the library filled. For a user other than root and luod's own, the counts
    /// are that user's own (its sessions, files, connections; fd_limit its share).
    pub struct LuoStatus as "luo_status" {
        /// In: sizeof(struct luo_status). Out: the bytes filled.
        pub size: u32,
        /// luod's pid.
        pub pid: u32,
        /// Reboots (emulated kernel live updates) since luod first started.
        pub generation: u64,
        /// Outgoing sessions.
        pub sessions_outgoing: u64,
        /// Incoming sessions, waiting for or held by a successor.
        pub sessions_incoming: u64,
        /// Preserved files.
        pub files: u64,
        /// Bytes of memory they keep alive.
        pub bytes: u64,
        /// Connections.
        pub clients: u64,
        /// Milliseconds since this generation started.
        pub uptime_ms: u64,
        /// Descriptor limit.
        pub fd_limit: u64,
        /// Descriptors in use.
        pub fd_used: u64,
        /// Upgrades of luod in this generation.
        pub upgrades: u64,
        /// Successors the last upgrade started (0: no upgrade yet).
        pub last_upgrade_rounds: u32,
        /// LUO_UPGRADE_* bits.
        pub last_upgrade_flags: u32,
        /// The migration in progress: bytes copied so far (0 when none).
        pub migrate_done: u64,
        /// The migration in progress: bytes to copy (0 when none).
        pub migrate_total: u64,
        /// luod's copy engine since start: bytes copied (root only, else 0).
        pub copy_bytes: u64,
        /// Units copied.
        pub copy_units: u64,
        /// Units a copy channel left undone, copied by the CPU instead.
        pub copy_units_fallback: u64,
        /// Batches the copy policy kept on the CPU.
        pub copy_batches_cpu: u64,
        /// luod's version, NUL-terminated.
        pub version: [c_char; 32],
    }

    /// One session, as `luoctl sessions` shows it, given to a luo_list_fn.
    ///
    /// The library owns it: it is valid during the callback only; copy what you keep.
    pub struct LuoSessionInfo as "luo_session_info" {
        /// sizeof(struct luo_session_info) as the library knows it: a later library may
        /// add fields after name, and a caller reads only the fields below size.
        pub size: u32,
        /// The namespace (uid) the session belongs to.
        pub owner: u32,
        /// LUO_SESSION_* bits; 0 for an outgoing session.
        pub flags: u32,
        /// Zero.
        pub reserved: u32,
        /// Files held.
        pub files: u64,
        /// Bytes of memory they keep alive.
        pub bytes: u64,
        /// The name, NUL-terminated.
        pub name: [c_char; 64],
    }
}

const _: () = assert!(size_of::<LuoStatus>() == 176);
const _: () = assert!(std::mem::offset_of!(LuoStatus, version) == 144);
const _: () = assert!(size_of::<LuoSessionInfo>() == 96);
const _: () = assert!(LUO_SESSION_NAME_MAX < 64);

/// `luo_list_fn`: the callback of `luo_list`.
pub type LuoListFn =
    Option<unsafe extern "C" fn(info: *const LuoSessionInfo, arg: *mut c_void) -> c_int>;

impl CType for LuoListFn {
    fn c_type() -> String {
        "luo_list_fn".to_owned()
    }
}

pub(crate) const TYPEDEFS: &[Typedef] = &[Typedef {
    doc: &[
        " Called by luo_list() once per session, with arg as given to luo_list().",
        " Return 0 to go on, anything else to stop. info is valid during the call only.",
    ],
    name: "luo_list_fn",
    ret: <c_int as CType>::c_type,
    params: &[
        ("info", <*const LuoSessionInfo as CType>::c_type),
        ("arg", <*mut c_void as CType>::c_type),
    ],
}];

/// The status `client` answers, in the C struct's layout.
fn status(client: &LuoClient) -> Result<LuoStatus, Error> {
    let s = client.lock().control.status()?;
    let mut out = LuoStatus {
        size: size_of::<LuoStatus>() as u32,
        pid: s.pid,
        generation: s.generation,
        sessions_outgoing: s.sessions_outgoing,
        sessions_incoming: s.sessions_incoming,
        files: s.files,
        bytes: s.bytes,
        clients: s.clients,
        uptime_ms: s.uptime_ms,
        fd_limit: s.fd_limit,
        fd_used: s.fd_used,
        upgrades: s.upgrades,
        last_upgrade_rounds: s.last_upgrade_rounds,
        last_upgrade_flags: if s.last_upgrade_stop_and_copy {
            LUO_UPGRADE_STOP_AND_COPY
        } else {
            0
        },
        migrate_done: s.migrate_done,
        migrate_total: s.migrate_total,
        copy_bytes: s.copy_bytes,
        copy_units: s.copy_units,
        copy_units_fallback: s.copy_units_fallback,
        copy_batches_cpu: s.copy_batches_cpu,
        version: [0; 32],
    };
    copy_c_string(&s.version, &mut out.version);
    Ok(out)
}

fn session_info(s: &luo_client::SessionSummary) -> LuoSessionInfo {
    let mut flags = 0;
    for (set, bit) in [
        (s.incoming, LUO_SESSION_INCOMING),
        (s.retrieved, LUO_SESSION_RETRIEVED),
        (s.finished, LUO_SESSION_FINISHED),
    ] {
        if set {
            flags |= bit;
        }
    }
    let mut info = LuoSessionInfo {
        size: size_of::<LuoSessionInfo>() as u32,
        owner: s.owner,
        flags,
        reserved: 0,
        files: s.files,
        bytes: s.bytes,
        name: [0; 64],
    };
    copy_c_string(&s.name, &mut info.name);
    info
}

c_functions! { FUNCTIONS;
    /// Connects to luod at socket_path, or, if it is NULL, at $LUOD_SOCKET or the default
    /// socket (`/run/luod/luod.sock` for root, `$XDG_RUNTIME_DIR/luod.sock` or
    /// `/tmp/luod-<uid>/luod.sock` for others), and checks that root, the caller's own uid
    /// or the uid in $LUOD_SERVER_UID serves it before anything is sent (-EACCES otherwise).
    /// -ENOENT or -ECONNREFUSED: luod does not run there.
    ///
    /// # Safety
    ///
    /// socket_path is NULL or a NUL-terminated path; out points to writable storage. Close
    /// the client with luo_close().
    pub unsafe extern "C" fn luo_connect(
        socket_path: *const c_char,
        out: *mut *mut LuoClient,
    ) -> c_int {
        guard("luo_connect", || {
            // SAFETY: the caller's contract: `out` is NULL or writable.
            let out = unsafe { arg::out_ptr(out, "out") }?;
            let socket = if socket_path.is_null() {
                luo_client::default_socket()
            } else {
                // SAFETY: not NULL, and NUL-terminated by the caller's contract.
                let path = unsafe { std::ffi::CStr::from_ptr(socket_path) };
                PathBuf::from(OsStr::from_bytes(path.to_bytes()))
            };
            out.set(Box::new(LuoClient::connect(&socket)?));
            Ok(0)
        })
    }

    /// Closes client and its connections, and frees it. Sessions it made stay open.
    /// NULL is allowed (nothing happens).
    ///
    /// # Safety
    ///
    /// client is NULL or was returned by luo_connect() and is not used after this, by this
    /// thread or any other.
    pub unsafe extern "C" fn luo_close(client: *mut LuoClient) {
        guard_void("luo_close", || {
            if !client.is_null() {
                // SAFETY: it came from Box::into_raw in luo_connect, and the caller gives it
                // back for good.
                drop(unsafe { Box::from_raw(client) });
            }
        });
    }

    /// CREATE_SESSION: a new outgoing session named name (at most LUO_SESSION_NAME_MAX
    /// bytes of UTF-8), in *out. -EEXIST if the uid has a session of that name; -EBUSY if
    /// another client of the uid holds its device.
    ///
    /// # Safety
    ///
    /// client comes from luo_connect(); name is a NUL-terminated string; out points to
    /// writable storage. Close the session with luo_session_close().
    pub unsafe extern "C" fn luo_session_create(
        client: *mut LuoClient,
        name: *const c_char,
        out: *mut *mut LuoSession,
    ) -> c_int {
        guard("luo_session_create", || {
            // SAFETY: the caller's contract: `out` is NULL or writable.
            let out = unsafe { arg::out_ptr(out, "out") }?;
            // SAFETY: the caller's contract: NULL or a live client.
            let client = unsafe { arg::object(client, "client") }?;
            // SAFETY: the caller's contract: NULL or NUL-terminated.
            let name = unsafe { arg::session_name(name) }?;
            out.set(Box::new(client.session(false, name)?));
            Ok(0)
        })
    }

    /// RETRIEVE_SESSION: the incoming session named name, handed off by a predecessor, in
    /// *out. -ENOENT if no session of the uid has that name; -EINVAL if it is outgoing or
    /// was retrieved already; -EBUSY if another client of the uid holds its device.
    ///
    /// # Safety
    ///
    /// As luo_session_create().
    pub unsafe extern "C" fn luo_session_retrieve(
        client: *mut LuoClient,
        name: *const c_char,
        out: *mut *mut LuoSession,
    ) -> c_int {
        guard("luo_session_retrieve", || {
            // SAFETY: the caller's contract: `out` is NULL or writable.
            let out = unsafe { arg::out_ptr(out, "out") }?;
            // SAFETY: the caller's contract: NULL or a live client.
            let client = unsafe { arg::object(client, "client") }?;
            // SAFETY: the caller's contract: NULL or NUL-terminated.
            let name = unsafe { arg::session_name(name) }?;
            out.set(Box::new(client.session(true, name)?));
            Ok(0)
        })
    }

    /// Fills *status with luod's state (see struct luo_status: set status->size first).
    ///
    /// # Safety
    ///
    /// client comes from luo_connect(); status points to status->size writable bytes.
    pub unsafe extern "C" fn luo_status(client: *mut LuoClient, status: *mut LuoStatus) -> c_int {
        guard("luo_status", || {
            if status.is_null() {
                return Err(Error::Null("status"));
            }
            // SAFETY: not NULL; the caller's struct starts with its size, whatever its
            // version, so reading that field reads the caller's own memory.
            let size = unsafe { (&raw const (*status).size).read() };
            if (size as usize) < std::mem::offset_of!(LuoStatus, generation) {
                return Err(Error::StatusSize { size });
            }
            // SAFETY: the caller's contract: NULL or a live client.
            let client = unsafe { arg::object(client, "client") }?;
            let mut ours = self::status(client)?;
            let size = size as usize;
            let filled = size.min(size_of::<LuoStatus>());
            ours.size = filled as u32;
            let dst = status.cast::<u8>();
            // SAFETY: `ours` is a whole LuoStatus, so its first `filled` bytes are readable
            // (LuoStatus has no padding: the layout is asserted above); the caller promised
            // `size` >= `filled` writable bytes at `status`, and the two do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping((&raw const ours).cast::<u8>(), dst, filled);
            }
            if size > filled {
                // SAFETY: bytes `filled..size` of the caller's struct, writable by its
                // contract: fields this library does not know read as zero.
                unsafe { dst.add(filled).write_bytes(0, size - filled) };
            }
            Ok(0)
        })
    }

    /// Calls each(info, arg) for every session the caller may see (its own; every uid's for
    /// root and luod's own uid), in luod's order, until each returns non-zero. each may be
    /// NULL, to count only. Returns the number of sessions passed to each (all of them if
    /// each is NULL), or a negative errno. The list is read from luod before the first
    /// call, so each may call the library, this client included.
    ///
    /// # Safety
    ///
    /// client comes from luo_connect(); each is NULL or a function that does not unwind.
    pub unsafe extern "C" fn luo_list(
        client: *mut LuoClient,
        each: LuoListFn,
        arg: *mut c_void,
    ) -> c_int {
        guard("luo_list", || {
            // SAFETY: the caller's contract: NULL or a live client.
            let client = unsafe { arg::object(client, "client") }?;
            let sessions = client.lock().control.sessions()?;
            let Some(each) = each else {
                return Ok(c_int::try_from(sessions.len()).unwrap_or(c_int::MAX));
            };
            let mut seen: c_int = 0;
            for s in &sessions {
                let info = session_info(s);
                seen = seen.saturating_add(1);
                // SAFETY: `each` is the caller's function; `info` lives until it returns.
                if unsafe { each(&info, arg) } != 0 {
                    break;
                }
            }
            Ok(seen)
        })
    }
}
