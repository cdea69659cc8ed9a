/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The kernel's /dev/liveupdate uAPI (include/uapi/linux/liveupdate.h), written from its
 * documented layout (shared/spec/kernel-luo.md, section 1) for luod's C test suite. The test
 * programs include this rather than the system's header, which a distribution kernel does not
 * ship yet; a program built against the kernel's own header sends the same bytes.
 *
 * General ioctl format: every command is _IO(LIVEUPDATE_IOCTL_TYPE, nr), without direction or
 * size bits. The argument struct begins with `size`, the caller's idea of the struct's size: a
 * smaller one than the command's minimum is EINVAL, a larger one must have an all-zero tail
 * (else E2BIG), and a shorter one is zero-extended. That is how the structs grow.
 */
#ifndef LUOD_TEST_LIVEUPDATE_H
#define LUOD_TEST_LIVEUPDATE_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define LIVEUPDATE_IOCTL_TYPE 0xBA

/* Bytes in a session name, including the terminating NUL. */
#define LIVEUPDATE_SESSION_NAME_LENGTH 64

/* Commands of /dev/liveupdate. */
#define LIVEUPDATE_CMD_BASE 0x00
#define LIVEUPDATE_CMD_CREATE_SESSION 0x00
#define LIVEUPDATE_CMD_RETRIEVE_SESSION 0x01

/* Commands of a session descriptor. */
#define LIVEUPDATE_CMD_SESSION_BASE 0x40
#define LIVEUPDATE_CMD_SESSION_PRESERVE_FD 0x40
#define LIVEUPDATE_CMD_SESSION_RETRIEVE_FD 0x41
#define LIVEUPDATE_CMD_SESSION_FINISH 0x42
#define LIVEUPDATE_CMD_SESSION_GET_NAME 0x43

/*
 * struct liveupdate_ioctl_create_session - LIVEUPDATE_IOCTL_CREATE_SESSION
 * @size: sizeof(struct liveupdate_ioctl_create_session)
 * @fd:   out: the new session's descriptor, close-on-exec
 * @name: in: the session's name, 1 to 63 bytes and a NUL, unique among outgoing sessions
 */
struct liveupdate_ioctl_create_session {
	__u32 size;
	__s32 fd;
	__u8 name[LIVEUPDATE_SESSION_NAME_LENGTH];
};

#define LIVEUPDATE_IOCTL_CREATE_SESSION \
	_IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_CREATE_SESSION)

/*
 * struct liveupdate_ioctl_retrieve_session - LIVEUPDATE_IOCTL_RETRIEVE_SESSION
 * @size: sizeof(struct liveupdate_ioctl_retrieve_session)
 * @fd:   out: the incoming session's descriptor, close-on-exec
 * @name: in: the name the session had before the update
 */
struct liveupdate_ioctl_retrieve_session {
	__u32 size;
	__s32 fd;
	__u8 name[LIVEUPDATE_SESSION_NAME_LENGTH];
};

#define LIVEUPDATE_IOCTL_RETRIEVE_SESSION \
	_IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_RETRIEVE_SESSION)

/*
 * struct liveupdate_session_preserve_fd - LIVEUPDATE_SESSION_PRESERVE_FD (outgoing sessions)
 * @size:  sizeof(struct liveupdate_session_preserve_fd)
 * @fd:    in: the descriptor to preserve
 * @token: in: the caller's key for the file, unique within the session
 */
struct liveupdate_session_preserve_fd {
	__u32 size;
	__s32 fd;
	__aligned_u64 token;
};

#define LIVEUPDATE_SESSION_PRESERVE_FD \
	_IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_PRESERVE_FD)

/*
 * struct liveupdate_session_retrieve_fd - LIVEUPDATE_SESSION_RETRIEVE_FD (incoming sessions)
 * @size:  sizeof(struct liveupdate_session_retrieve_fd)
 * @fd:    out: a new descriptor of the preserved file, close-on-exec
 * @token: in: the key the file was preserved under
 */
struct liveupdate_session_retrieve_fd {
	__u32 size;
	__s32 fd;
	__aligned_u64 token;
};

#define LIVEUPDATE_SESSION_RETRIEVE_FD \
	_IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_RETRIEVE_FD)

/*
 * struct liveupdate_session_finish - LIVEUPDATE_SESSION_FINISH (incoming sessions)
 * @size:     sizeof(struct liveupdate_session_finish)
 * @reserved: must be zero
 */
struct liveupdate_session_finish {
	__u32 size;
	__u32 reserved;
};

#define LIVEUPDATE_SESSION_FINISH \
	_IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_FINISH)

/*
 * struct liveupdate_session_get_name - LIVEUPDATE_SESSION_GET_NAME
 * @size:     sizeof(struct liveupdate_session_get_name)
 * @reserved: must be zero
 * @name:     out: the session's full name, NUL-terminated
 */
struct liveupdate_session_get_name {
	__u32 size;
	__u32 reserved;
	__u8 name[LIVEUPDATE_SESSION_NAME_LENGTH];
};

#define LIVEUPDATE_SESSION_GET_NAME \
	_IO(LIVEUPDATE_IOCTL_TYPE, LIVEUPDATE_CMD_SESSION_GET_NAME)

#endif /* LUOD_TEST_LIVEUPDATE_H */
