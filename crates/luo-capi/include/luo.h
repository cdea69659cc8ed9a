/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * luo.h: libluo, the C library of luod, the Live Update Orchestrator in userspace.
 *
 * Generated from crates/luo-capi by `cargo run -p luo-capi --example luo-h`; do not edit.
 * docs/c-library.md is the guide: building, installing, linking and a workload update.
 *
 * Conventions, for every function below:
 *
 * - Errors: a function that returns int returns 0 (or a count, where it says so) on
 *   success and a negative errno on failure (-EINVAL, -ENOENT, ...): the errno luod, or the
 *   kernel for the same operation on /dev/liveupdate, gives. luo_last_error() then describes
 *   the failure. errno itself is not set. A failed call changes nothing: no session, file or
 *   descriptor is lost or half-made.
 * - Pointers: a NULL pointer where an object is expected is -EINVAL, checked before anything
 *   is sent. An output pointer (`out`, `fd_out`) is written only on success, except that
 *   `*out` is set to NULL on failure.
 * - Descriptors: the library never closes or changes a descriptor it is given; every
 *   descriptor it returns is close-on-exec and belongs to the caller.
 * - Threads: every handle may be used from any thread; calls on one handle are serialized,
 *   calls on different handles run in parallel. A handle must not be closed while another
 *   thread still uses it. The library is not async-signal-safe.
 * - Panics: none crosses this interface; an internal error would be -EIO with a message.
 */
#ifndef LUO_H
#define LUO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- handles ---- */

/**
 * A connection to luod: made by luo_connect(), closed by luo_close().
 *
 * It answers luo_status() and luo_list() at once. The first luo_session_create() or
 * luo_session_retrieve() also opens the caller's device, the userspace
 * /dev/liveupdate, of which each uid has one at a time (-EBUSY while another client
 * of the uid, in this process or another, holds it); the client keeps it until
 * luo_close(). Sessions outlive their client: close the client once its sessions are
 * made, and a successor can open the device while this process still runs.
 */
struct luo_client;

/**
 * One session: made by luo_session_create() (outgoing) or luo_session_retrieve()
 * (incoming), freed by luo_session_close(). It is a connection of its own: it does
 * not need the client that made it.
 */
struct luo_session;

/* ---- errors ---- */

/**
 * The message of the last call that failed on the calling thread, such as
 * "luo_retrieve: token 7: RETRIEVE_FD failed: ENOENT". Never NULL: "" before any
 * failure. A successful call leaves it as it was.
 *
 * Safety:
 * The string belongs to the library and stays valid until the next failing call on the
 * same thread; copy it to keep it.
 */
const char *luo_last_error(void);

/* ---- the client: luod, its status and its sessions ---- */

/** The longest session name, in bytes, without its NUL. */
#define LUO_SESSION_NAME_MAX 63

/** luo_session_info.flags: the session is incoming (handed over), not outgoing. */
#define LUO_SESSION_INCOMING 1

/** luo_session_info.flags: incoming and retrieved by a successor. */
#define LUO_SESSION_RETRIEVED 2

/** luo_session_info.flags: incoming and finished. */
#define LUO_SESSION_FINISHED 4

/** luo_status.last_upgrade_flags: the last upgrade of luod fell back to stop and copy. */
#define LUO_UPGRADE_STOP_AND_COPY 1

/**
 * luod's state, as `luoctl status` shows it, filled by luo_status().
 *
 * Set size to sizeof(struct luo_status) first: `struct luo_status st = { .size =
 * sizeof st };`. A library that knows more fields than the caller fills only the
 * caller's size; one that knows fewer zeroes the rest. On return, size is the number
 * of bytes the library filled. For a user other than root and luod's own, the counts
 * are that user's own (its sessions, files, connections; fd_limit its share).
 */
struct luo_status {
    /** In: sizeof(struct luo_status). Out: the bytes filled. */
    uint32_t size;
    /** luod's pid. */
    uint32_t pid;
    /** Reboots (emulated kernel live updates) since luod first started. */
    uint64_t generation;
    /** Outgoing sessions. */
    uint64_t sessions_outgoing;
    /** Incoming sessions, waiting for or held by a successor. */
    uint64_t sessions_incoming;
    /** Preserved files. */
    uint64_t files;
    /** Bytes of memory they keep alive. */
    uint64_t bytes;
    /** Connections. */
    uint64_t clients;
    /** Milliseconds since this generation started. */
    uint64_t uptime_ms;
    /** Descriptor limit. */
    uint64_t fd_limit;
    /** Descriptors in use. */
    uint64_t fd_used;
    /** Upgrades of luod in this generation. */
    uint64_t upgrades;
    /** Successors the last upgrade started (0: no upgrade yet). */
    uint32_t last_upgrade_rounds;
    /** LUO_UPGRADE_* bits. */
    uint32_t last_upgrade_flags;
    /** The migration in progress: bytes copied so far (0 when none). */
    uint64_t migrate_done;
    /** The migration in progress: bytes to copy (0 when none). */
    uint64_t migrate_total;
    /** luod's copy engine since start: bytes copied (root only, else 0). */
    uint64_t copy_bytes;
    /** Units copied. */
    uint64_t copy_units;
    /** Units a copy channel left undone, copied by the CPU instead. */
    uint64_t copy_units_fallback;
    /** Batches the copy policy kept on the CPU. */
    uint64_t copy_batches_cpu;
    /** luod's version, NUL-terminated. */
    char version[32];
};

/**
 * One session, as `luoctl sessions` shows it, given to a luo_list_fn.
 *
 * The library owns it: it is valid during the callback only; copy what you keep.
 */
struct luo_session_info {
    /**
     * sizeof(struct luo_session_info) as the library knows it: a later library may
     * add fields after name, and a caller reads only the fields below size.
     */
    uint32_t size;
    /** The namespace (uid) the session belongs to. */
    uint32_t owner;
    /** LUO_SESSION_* bits; 0 for an outgoing session. */
    uint32_t flags;
    /** Zero. */
    uint32_t reserved;
    /** Files held. */
    uint64_t files;
    /** Bytes of memory they keep alive. */
    uint64_t bytes;
    /** The name, NUL-terminated. */
    char name[64];
};

/**
 * Called by luo_list() once per session, with arg as given to luo_list().
 * Return 0 to go on, anything else to stop. info is valid during the call only.
 */
typedef int (*luo_list_fn)(const struct luo_session_info *info, void *arg);

/**
 * Connects to luod at socket_path, or, if it is NULL, at $LUOD_SOCKET or the default
 * socket (`/run/luod/luod.sock` for root, `$XDG_RUNTIME_DIR/luod.sock` or
 * `/tmp/luod-<uid>/luod.sock` for others), and checks that root, the caller's own uid
 * or the uid in $LUOD_SERVER_UID serves it before anything is sent (-EACCES otherwise).
 * -ENOENT or -ECONNREFUSED: luod does not run there.
 *
 * Safety:
 * socket_path is NULL or a NUL-terminated path; out points to writable storage. Close
 * the client with luo_close().
 */
int luo_connect(const char *socket_path, struct luo_client **out);

/**
 * Closes client and its connections, and frees it. Sessions it made stay open.
 * NULL is allowed (nothing happens).
 *
 * Safety:
 * client is NULL or was returned by luo_connect() and is not used after this, by this
 * thread or any other.
 */
void luo_close(struct luo_client *client);

/**
 * CREATE_SESSION: a new outgoing session named name (at most LUO_SESSION_NAME_MAX
 * bytes of UTF-8), in *out. -EEXIST if the uid has a session of that name; -EBUSY if
 * another client of the uid holds its device.
 *
 * Safety:
 * client comes from luo_connect(); name is a NUL-terminated string; out points to
 * writable storage. Close the session with luo_session_close().
 */
int luo_session_create(struct luo_client *client, const char *name, struct luo_session **out);

/**
 * RETRIEVE_SESSION: the incoming session named name, handed off by a predecessor, in
 * *out. -ENOENT if no session of the uid has that name; -EINVAL if it is outgoing or
 * was retrieved already; -EBUSY if another client of the uid holds its device.
 *
 * Safety:
 * As luo_session_create().
 */
int luo_session_retrieve(struct luo_client *client, const char *name, struct luo_session **out);

/**
 * Fills *status with luod's state (see struct luo_status: set status->size first).
 *
 * Safety:
 * client comes from luo_connect(); status points to status->size writable bytes.
 */
int luo_status(struct luo_client *client, struct luo_status *status);

/**
 * Calls each(info, arg) for every session the caller may see (its own; every uid's for
 * root and luod's own uid), in luod's order, until each returns non-zero. each may be
 * NULL, to count only. Returns the number of sessions passed to each (all of them if
 * each is NULL), or a negative errno. The list is read from luod before the first
 * call, so each may call the library, this client included.
 *
 * Safety:
 * client comes from luo_connect(); each is NULL or a function that does not unwind.
 */
int luo_list(struct luo_client *client, luo_list_fn each, void *arg);

/* ---- sessions: preserve, hand off, retrieve, finish ---- */

/**
 * PRESERVE_FD: preserves fd under token in this outgoing session. luod keeps its own
 * reference: the caller may close fd at once (the memory of a memfd stays). -EEXIST
 * if token is taken in this session; -EBUSY if the file (for a memfd: its inode,
 * through any descriptor) is preserved already, in any session; -EINVAL on an
 * incoming session; -EBADF if fd is not open; -EOPNOTSUPP for a kind of file no
 * handler of luod takes; -EDQUOT or -EMFILE over the uid's quotas.
 *
 * Safety:
 * session comes from luo_session_create() or luo_session_retrieve().
 */
int luo_preserve(struct luo_session *session, int fd, uint64_t token);

/**
 * RETRIEVE_FD: the file preserved under token, in *fd_out: a new descriptor
 * (close-on-exec) of a new open file description, with the size, seals and position the
 * predecessor left; the same memory, not a copy. The caller owns it. Retrieving again
 * gives another descriptor. -ENOENT for a token not in the session; -EINVAL on an
 * outgoing session.
 *
 * Safety:
 * session comes from luo_session_retrieve(); fd_out points to writable storage.
 */
int luo_retrieve(struct luo_session *session, uint64_t token, int *fd_out);

/**
 * FINISH: ends this incoming session once the successor has what it needs: every file
 * not retrieved is discarded. The handle stays to be closed. -EINVAL on an outgoing
 * session; -EBUSY if a handler refused (nothing was finished).
 *
 * Safety:
 * session comes from luo_session_retrieve().
 */
int luo_session_finish(struct luo_session *session);

/**
 * Handoff: freezes this outgoing session's files (recording each memfd's size, position
 * and seals) and moves the session to the incoming set, where a successor of the same
 * uid retrieves it by name; the process may then exit. The handle becomes inert (every
 * session call on it is -EINVAL) and stays to be closed. -EEXIST if an incoming session
 * of the uid has the name; -EINVAL on an incoming session; a handler's error if a file
 * cannot be frozen (nothing changed).
 *
 * Safety:
 * session comes from luo_session_create().
 */
int luo_handoff(struct luo_session *session);

/**
 * Closes the handle and frees it. Unless another copy of its descriptor is open (see
 * luo_session_fd()), this closes the session: an outgoing one not handed off is
 * discarded with its files, an incoming one is finished. NULL is allowed.
 *
 * Safety:
 * session is NULL or came from this library and is not used after this, by this thread
 * or any other.
 */
void luo_session_close(struct luo_session *session);

/* ---- descriptors ---- */

/**
 * The session's descriptor (>= 0), or -EINVAL for NULL. It stays the handle's: do not
 * close it. To hand the open session to a child process, dup() it (without
 * close-on-exec) and give the child the number; the child adopts it with
 * luo_session_from_fd(). The session lives while any copy is open.
 *
 * Safety:
 * session is NULL or a live session.
 */
int luo_session_fd(struct luo_session *session);

/**
 * A handle for a session descriptor obtained some other way (inherited, received over
 * a socket), in *out. On success the handle owns fd; on failure fd is left alone.
 * -EBADF if fd is not open. Whether it is a session shows at the first call.
 *
 * Safety:
 * fd is not owned by anything else that will close it; out points to writable storage.
 */
int luo_session_from_fd(int fd, struct luo_session **out);

#ifdef __cplusplus
}
#endif

#endif /* LUO_H */
