/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Helpers of luod's C test suite: the /dev/liveupdate calls as small functions, memfds with
 * known contents, the two-stage state session, and a TAP-like report.
 *
 * Every program prints "ok N - what" for each check, "not ok N - what: why" for the first
 * failure (and exits 1), "SKIP: why" when /dev/liveupdate is absent (exit 4, the kselftest
 * skip code) and "TEST PASSED" at the end (exit 0).
 */
#ifndef LUOD_TEST_LUO_TEST_H
#define LUOD_TEST_LUO_TEST_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#include "liveupdate.h"

#define LUO_DEVICE "/dev/liveupdate"
#define KSFT_SKIP 4

_Static_assert(sizeof(struct liveupdate_ioctl_create_session) == 72, "create_session");
_Static_assert(sizeof(struct liveupdate_ioctl_retrieve_session) == 72, "retrieve_session");
_Static_assert(sizeof(struct liveupdate_session_preserve_fd) == 16, "preserve_fd");
_Static_assert(sizeof(struct liveupdate_session_retrieve_fd) == 16, "retrieve_fd");
_Static_assert(sizeof(struct liveupdate_session_finish) == 8, "finish");
_Static_assert(sizeof(struct liveupdate_session_get_name) == 72, "get_name");
_Static_assert(offsetof(struct liveupdate_session_preserve_fd, token) == 8, "token");
_Static_assert(LIVEUPDATE_IOCTL_CREATE_SESSION == 0xBA00, "create number");
_Static_assert(LIVEUPDATE_SESSION_GET_NAME == 0xBA43, "get_name number");

/* Report. */
extern int luo_checks;
void luo_ok(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void luo_fail(const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4), noreturn));
void luo_skip(const char *why) __attribute__((noreturn));
void luo_passed(void) __attribute__((noreturn));
const char *luo_errname(int e);

#define FAIL(...) luo_fail(__FILE__, __LINE__, __VA_ARGS__)

/* Checks that `call` succeeds (returns >= 0); evaluates to its value. */
#define EXPECT_OK(call, ...)                                                     \
	({                                                                       \
		errno = 0;                                                       \
		long __r = (long)(call);                                         \
		if (__r < 0)                                                     \
			FAIL("%s: expected success, got %s (%s)", #call,         \
			     luo_errname(errno), strerror(errno));               \
		luo_ok(__VA_ARGS__);                                             \
		__r;                                                             \
	})

/* Checks that `call` fails with -1 and errno `e`. */
#define EXPECT_ERR(call, e, ...)                                                 \
	do {                                                                     \
		errno = 0;                                                       \
		long __r = (long)(call);                                         \
		int __e = errno;                                                 \
		if (__r != -1 || __e != (e))                                     \
			FAIL("%s: expected %s, got %ld/%s", #call, luo_errname(e), \
			     __r, __r == -1 ? luo_errname(__e) : "no error");    \
		luo_ok(__VA_ARGS__);                                             \
	} while (0)

#define CHECK(cond, ...)                                                         \
	do {                                                                     \
		if (!(cond))                                                     \
			FAIL("%s", #cond);                                       \
		luo_ok(__VA_ARGS__);                                             \
	} while (0)

/* The device: the descriptor, or -1 with errno. luo_open_or_skip skips on ENOENT. */
int luo_open_device(void);
int luo_open_or_skip(void);

/* The ioctls, each returning the new descriptor, 0, or -1 with errno. */
int luo_create_session(int dev, const char *name);
int luo_retrieve_session(int dev, const char *name);
int luo_preserve_fd(int session, int fd, uint64_t token);
int luo_retrieve_fd(int session, uint64_t token);
int luo_finish(int session);
int luo_get_name(int session, char name[LIVEUPDATE_SESSION_NAME_LENGTH]);

/* The byte at offset `i` of the memfd with `seed`: contents anyone can recompute. */
static inline unsigned char luo_pattern(uint64_t seed, size_t i)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + i;
	x ^= x >> 29;
	return (unsigned char)(x * 0xBF58476D1CE4E5B9ull >> 56);
}

/* A memfd of `size` bytes of luo_pattern(seed); -1 with errno on failure. */
int luo_memfd(const char *name, uint64_t seed, size_t size);
/*
 * Checks that `fd` holds exactly luo_pattern(seed) over `size` bytes, through mmap and
 * through read (from offset 0): 0, or -1 with a message in `why`.
 */
int luo_verify(int fd, uint64_t seed, size_t size, char *why, size_t why_len);

/* True if `a` and `b` are descriptors of one open file description. */
int luo_same_file(int a, int b);

/* Sets RLIMIT_NOFILE to `n`. */
void luo_set_fd_limit(unsigned long n);
/* Descriptors open now. */
int luo_fds_open(void);

/*
 * The two-stage machinery of the kernel's kexec selftests: stage 1 stores the next stage's
 * number in a memfd, in a session of its own; stage 2 finds it by retrieving that session.
 * luo_stage returns the stage found (1 if the state session does not exist) and leaves the
 * retrieved state session in *state (or -1).
 */
#define LUO_STATE_TOKEN 999
int luo_stage(int dev, const char *state_name, int *state);
void luo_save_next_stage(int dev, const char *state_name, int next, int *state_fd);
/*
 * The stage a two-stage program is in: `--stage N` on the command line states what the caller
 * expects, and a stage 2 without a state session to retrieve then fails ("nothing was handed
 * over": stage 2 already ran, or no update happened). Without it, the stage is detected.
 */
int luo_detect_stage(int argc, char **argv, int dev, const char *state_name, int *state);

/*
 * The whole main() of a two-stage program: line-buffered stdout, open the device (or skip),
 * detect the stage, run stage_1(dev) or stage_2(dev, state). Each stage ends the process.
 */
int luo_two_stage_main(int argc, char **argv, const char *state_name, void (*stage_1)(int dev),
		       void (*stage_2)(int dev, int state)) __attribute__((noreturn));

/* Stage 2's end: finish and close the state session, close the device, print TEST PASSED. */
void luo_stage_2_done(int dev, int state) __attribute__((noreturn));

/*
 * Stage 1's end: fork a child that keeps `fds` open (so the sessions survive this process's
 * exit, until the update), print "CHILD <pid>" and return in the parent. The child closes
 * stdio and every descriptor not in `fds`, then sleeps until killed.
 */
void luo_daemonize_holder(const int *fds, int n);

#endif /* LUOD_TEST_LUO_TEST_H */
