//! libluo: the C library of luod, for VMMs and services written in C.
//!
//! It builds as `libluo.so` and `libluo.a` with the header `include/luo.h` and the
//! pkg-config files `luo.pc` and `luo-static.pc` (`scripts/install-capi PREFIX` installs
//! them; `docs/c-library.md` is the guide). It is the native API of [`luo_client`], in C:
//!
//! - `struct luo_client` (module [`client`]): a connection to luod. It gives luod's status
//!   and the session list, and creates and retrieves sessions through the caller's device
//!   (the userspace `/dev/liveupdate`, one per uid at a time), which it opens on first use.
//! - `struct luo_session` (module [`session`]): one session. An outgoing one preserves
//!   descriptors under `uint64_t` tokens and is handed off; an incoming one gives them back
//!   and is finished. A session lives on without its client.
//! - Every function returns 0 or a count, or a negative errno; `luo_last_error()` (module
//!   [`error`]) says what went wrong, per thread. Every body runs under `catch_unwind`: no
//!   panic crosses into C.
//!
//! The header is generated from the definitions themselves (module [`header`]): each
//! function, struct and constant is defined through a macro that also records its doc
//! comment and the C spelling of its types, and `tests/header.rs` fails if the committed
//! `include/luo.h` differs from what they give.
//!
//! # A workload update, in C
//!
//! ```c
//! #include <luo.h>
//!
//! /* Version 1: preserve the state memfd and hand the session off. */
//! struct luo_client *client;
//! struct luo_session *session;
//! luo_connect(NULL, &client);                  /* NULL: LUOD_SOCKET or the default */
//! luo_session_create(client, "cache", &session);
//! luo_preserve(session, memfd, 1);
//! luo_handoff(session);
//! luo_session_close(session);
//! luo_close(client);
//!
//! /* Version 2, a new process: retrieve it and finish. */
//! int fd;
//! luo_connect(NULL, &client);
//! luo_session_retrieve(client, "cache", &session);
//! luo_retrieve(session, 1, &fd);               /* the same memory, not a copy */
//! luo_session_finish(session);
//! luo_session_close(session);
//! luo_close(client);
//! ```
//!
//! `examples/workload.c` is the same with every error checked, and the tests build it
//! against the installed header and library and run it against a real luod.
#![allow(unsafe_code)] // The C ABI: every unsafe block says why it is sound.
// The `# Safety` sections below are written for C callers, who read them in luo.h.

pub mod client;
pub mod error;
pub mod header;
pub mod session;

mod arg;

use std::ffi::c_char;

pub use client::{LuoClient, LuoListFn, LuoSessionInfo, LuoStatus};
pub use session::LuoSession;

use header::Section;

c_functions! { ERROR_FUNCTIONS;
    /// The message of the last call that failed on the calling thread, such as
    /// "luo_retrieve: token 7: RETRIEVE_FD failed: ENOENT". Never NULL: "" before any
    /// failure. A successful call leaves it as it was.
    ///
    /// # Safety
    ///
    /// The string belongs to the library and stays valid until the next failing call on the
    /// same thread; copy it to keep it.
    pub unsafe extern "C" fn luo_last_error() -> *const c_char {
        error::last_error()
    }
}

/// The handles `include/luo.h` declares.
pub const OPAQUE: [header::Opaque; 2] = [client::OPAQUE, session::OPAQUE];

/// Everything else `include/luo.h` declares, in order.
pub const SECTIONS: [Section; 4] = [
    Section {
        title: "errors",
        functions: ERROR_FUNCTIONS,
        ..Section::EMPTY
    },
    Section {
        title: "the client: luod, its status and its sessions",
        constants: client::CONSTANTS,
        structs: client::STRUCTS,
        typedefs: client::TYPEDEFS,
        functions: client::FUNCTIONS,
    },
    Section {
        title: "sessions: preserve, hand off, retrieve, finish",
        functions: session::FUNCTIONS,
        ..Section::EMPTY
    },
    Section {
        title: "descriptors",
        functions: session::FD_FUNCTIONS,
        ..Section::EMPTY
    },
];
