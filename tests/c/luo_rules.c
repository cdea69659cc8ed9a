// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * The rules of /dev/liveupdate, one check each, as the kernel's LUO applies them
 * (shared/spec/kernel-luo.md §1): the decoding order of every ioctl, exclusive open, names,
 * tokens, supported descriptors, double preservation, retrieval, FINISH, GET_NAME, and the
 * close semantics of outgoing and retrieved sessions, across fork, dup and execve.
 *
 *   luo_rules 1    before the update: every rule that needs no incoming session, then the
 *                  sessions stage 2 checks; a child keeps them open; prints CHILD <pid>
 *   luo_rules 2    after `luoctl reboot`: the incoming rules; leaves sessions for stage 3
 *   luo_rules 3    after a second reboot: what was carried forward and what was not
 *   luo_rules exec-child FD NAME    (internal) checks a session inherited across execve
 *
 * Each stage prints TEST PASSED and exits 0, or stops at the first failed check with exit 1.
 */
#define _GNU_SOURCE
#include "luo_test.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *self_path;

/* Two pages, the second PROT_NONE: a struct placed at the end of the first one has its tail
 * run into a fault. */
static unsigned char *guard_pages(void)
{
	long page = sysconf(_SC_PAGESIZE);
	unsigned char *p = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED || mprotect(p + page, page, PROT_NONE) < 0)
		FAIL("guard pages: %s", strerror(errno));
	memset(p, 0, page);
	return p + page;
}

/* A page holding a copy of `len` bytes of `src`, made read-only. */
static void *read_only_copy(const void *src, size_t len)
{
	long page = sysconf(_SC_PAGESIZE);
	void *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		FAIL("mmap: %s", strerror(errno));
	memcpy(p, src, len);
	if (mprotect(p, page, PROT_READ) < 0)
		FAIL("mprotect: %s", strerror(errno));
	return p;
}

static int fd_cloexec(int fd)
{
	int flags = fcntl(fd, F_GETFD);

	if (flags < 0)
		FAIL("F_GETFD %d: %s", fd, strerror(errno));
	return (flags & FD_CLOEXEC) != 0;
}

/* Waits for a child and checks it exited with 0. */
static void reap_ok(pid_t pid, const char *what)
{
	int status;

	if (waitpid(pid, &status, 0) != pid)
		FAIL("waitpid %s: %s", what, strerror(errno));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		FAIL("%s: child status %#x", what, status);
	luo_ok("%s", what);
}

/* ---------------------------------------------------------------- stage 1 */

static void device_rules(void)
{
	int dev, dup_dev, dirfd;
	pid_t pid;
	int pipefd[2];
	char c;

	dev = EXPECT_OK(open(LUO_DEVICE, O_RDWR), "open " LUO_DEVICE);
	CHECK(!fd_cloexec(dev), "open without O_CLOEXEC: the descriptor is inherited by exec");
	EXPECT_ERR(open(LUO_DEVICE, O_RDWR), EBUSY, "a second open is EBUSY (exclusive open)");
	EXPECT_ERR(openat(AT_FDCWD, LUO_DEVICE, O_RDWR), EBUSY, "openat: EBUSY");
	EXPECT_ERR(open64(LUO_DEVICE, O_RDONLY), EBUSY, "open64: EBUSY");
	EXPECT_ERR(open("/dev//liveupdate", O_RDWR), EBUSY, "/dev//liveupdate is the device");
	dirfd = EXPECT_OK(open("/dev", O_RDONLY | O_DIRECTORY), "open /dev");
	EXPECT_ERR(openat(dirfd, "liveupdate", O_RDWR), EBUSY,
		   "openat(/dev fd, \"liveupdate\") is the device");
	close(dirfd);
	EXPECT_ERR(open("/nonexistent/liveupdate", O_RDWR), ENOENT,
		   "another directory's liveupdate is not the device");
	close(EXPECT_OK(open("/dev/null", O_RDWR), "other paths open as usual"));
	close(dev);
	dev = EXPECT_OK(open(LUO_DEVICE, O_RDWR | O_CLOEXEC),
			"close, then open again at once: the close was seen");
	CHECK(fd_cloexec(dev), "open with O_CLOEXEC: close-on-exec");

	dup_dev = EXPECT_OK(dup(dev), "dup the device");
	close(dev);
	EXPECT_ERR(open(LUO_DEVICE, O_RDWR), EBUSY, "a dup keeps the device open");
	close(EXPECT_OK(luo_create_session(dup_dev, "via-dup"), "the dup works"));
	close(dup_dev);

	dev = EXPECT_OK(open(LUO_DEVICE, O_RDWR), "open after the last copy closed");
	if (pipe(pipefd) < 0)
		FAIL("pipe: %s", strerror(errno));
	pid = fork();
	if (pid == 0) {
		close(pipefd[1]);
		/* Hold the inherited device until the parent says so. */
		if (read(pipefd[0], &c, 1) < 0)
			_exit(2);
		_exit(luo_create_session(dev, "from-child") < 0 ? 1 : 0);
	}
	close(pipefd[0]);
	close(dev);
	EXPECT_ERR(open(LUO_DEVICE, O_RDWR), EBUSY,
		   "a forked child's copy keeps the device open");
	if (write(pipefd[1], "x", 1) != 1)
		FAIL("write: %s", strerror(errno));
	close(pipefd[1]);
	reap_ok(pid, "the child used the inherited device");
	close(EXPECT_OK(open(LUO_DEVICE, O_RDWR), "the child exited: open works"));
}

static void decoding_rules(int dev)
{
	struct liveupdate_ioctl_create_session cs;
	unsigned char *edge = guard_pages();
	unsigned char big[8192];
	unsigned char *huge;
	int s;

	EXPECT_ERR(ioctl(dev, _IO(0xBA, 0x02), &cs), EINVAL, "device nr 2: EINVAL");
	EXPECT_ERR(ioctl(dev, _IO(0xBA, 0x40), &cs), EINVAL, "a session command on the device: EINVAL");
	EXPECT_ERR(ioctl(dev, _IO(0xBA, 0xff), NULL), EINVAL,
		   "out-of-range number with a NULL struct: EINVAL (range before reading)");
	EXPECT_ERR(ioctl(dev, _IO(0xBB, 0x00), &cs), ENOTTY, "wrong type byte: ENOTTY");
	EXPECT_ERR(ioctl(dev, _IOW(0xBA, 0x00, struct liveupdate_ioctl_create_session), &cs),
		   ENOTTY, "direction and size bits: ENOTTY");
	EXPECT_ERR(ioctl(dev, _IOR(0xBA, 0x01, int), NULL), EFAULT,
		   "ENOTTY comes after reading size: a NULL struct is EFAULT");
	EXPECT_ERR(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, NULL), EFAULT, "NULL struct: EFAULT");
	EXPECT_ERR(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, (void *)16), EFAULT,
		   "bad pointer: EFAULT");

	memset(&cs, 0, sizeof(cs));
	strcpy((char *)cs.name, "sized");
	cs.size = 0;
	EXPECT_ERR(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &cs), EINVAL, "size 0: EINVAL");
	cs.size = 71;
	EXPECT_ERR(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &cs), EINVAL,
		   "size below the minimum: EINVAL");

	memset(big, 0, sizeof(big));
	cs.size = 80;
	memcpy(big, &cs, sizeof(cs));
	big[75] = 1;
	EXPECT_ERR(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, big), E2BIG,
		   "non-zero byte past the known size: E2BIG");
	big[75] = 0;
	s = EXPECT_OK(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, big),
		      "larger struct with a zero tail: accepted");
	memcpy(&cs, big, sizeof(cs));
	CHECK(cs.fd >= 0 && fd_cloexec(cs.fd), "the new session descriptor is close-on-exec");
	CHECK(((struct liveupdate_ioctl_create_session *)big)->size == 80,
	      "size is copied back unchanged");
	close(cs.fd);
	(void)s;

	memset(big, 0, sizeof(big));
	memcpy(big, &cs, sizeof(cs));
	((struct liveupdate_ioctl_create_session *)big)->size = sizeof(big);
	strcpy((char *)((struct liveupdate_ioctl_create_session *)big)->name, "sized-8k");
	EXPECT_OK(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, big), "8 KiB struct, zero tail");
	close(((struct liveupdate_ioctl_create_session *)big)->fd);

	huge = calloc(1, 1 << 20);
	if (!huge)
		FAIL("calloc");
	memcpy(huge, &cs, sizeof(cs));
	((struct liveupdate_ioctl_create_session *)huge)->size = 1 << 20;
	strcpy((char *)((struct liveupdate_ioctl_create_session *)huge)->name, "sized-1m");
	EXPECT_OK(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, huge), "1 MiB struct, zero tail");
	close(((struct liveupdate_ioctl_create_session *)huge)->fd);
	huge[(1 << 20) - 1] = 1;
	EXPECT_ERR(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, huge), E2BIG,
		   "1 MiB struct, last byte set: E2BIG");
	free(huge);

	/* A struct whose tail runs into an unmapped page. */
	{
		struct liveupdate_ioctl_create_session *at =
			(void *)(edge - sizeof(cs) - 8);

		memset(at, 0, sizeof(cs) + 8);
		at->size = 200;
		strcpy((char *)at->name, "edge");
		EXPECT_ERR(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, at), EFAULT,
			   "zero tail running into an unmapped page: EFAULT");
		((unsigned char *)at)[sizeof(cs) + 3] = 7;
		EXPECT_ERR(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, at), E2BIG,
			   "non-zero byte before the unmapped page: E2BIG (the scan stops there)");
		at = (void *)(edge - 40);
		memset(at, 0, 40);
		at->size = sizeof(cs);
		EXPECT_ERR(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, at), EFAULT,
			   "struct cut by an unmapped page: EFAULT");
	}
	{
		struct liveupdate_ioctl_create_session ro = { .size = sizeof(ro) };
		void *p;

		strcpy((char *)ro.name, "read-only");
		p = read_only_copy(&ro, sizeof(ro));
		EXPECT_ERR(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, p), EFAULT,
			   "CREATE_SESSION into a read-only struct: EFAULT on copy-back");
		close(EXPECT_OK(luo_create_session(dev, "read-only"),
				"... and that session was destroyed: its name is free"));
	}
}

static void name_rules(int dev)
{
	char name[LIVEUPDATE_SESSION_NAME_LENGTH];
	char got[LIVEUPDATE_SESSION_NAME_LENGTH];
	struct liveupdate_ioctl_create_session cs = { .size = sizeof(cs) };
	int a, b;

	EXPECT_ERR(luo_create_session(dev, ""), EINVAL, "empty name: EINVAL");
	memset(cs.name, 'x', sizeof(cs.name));
	EXPECT_ERR(ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &cs), EINVAL,
		   "64 bytes without a NUL: EINVAL");
	memset(name, 'n', 63);
	name[63] = 0;
	a = EXPECT_OK(luo_create_session(dev, name), "63-byte name");
	EXPECT_OK(luo_get_name(a, got), "GET_NAME");
	CHECK(memcmp(got, name, 64) == 0, "GET_NAME returns all 63 bytes");
	close(a);
	for (int i = 0; i < 63; i++)
		name[i] = (char)(1 + (i * 37) % 255);
	a = EXPECT_OK(luo_create_session(dev, name), "no character-set restriction (bytes 1..255)");
	EXPECT_OK(luo_get_name(a, got), "GET_NAME of a binary name");
	CHECK(memcmp(got, name, 64) == 0, "binary name returned exactly");
	close(a);
	a = EXPECT_OK(luo_create_session(dev, "dup-name"), "create dup-name");
	EXPECT_ERR(luo_create_session(dev, "dup-name"), EEXIST, "the same name again: EEXIST");
	close(a);
	b = EXPECT_OK(luo_create_session(dev, "dup-name"),
		      "closed, the name is free at once (close seen before EEXIST)");
	close(b);
}

static void session_decoding_rules(int dev)
{
	int s = EXPECT_OK(luo_create_session(dev, "decode"), "create decode");
	unsigned char big[64] = { 0 };
	unsigned char *edge = guard_pages();
	struct liveupdate_session_get_name gn = { .size = sizeof(gn) };
	int memfd = luo_memfd("decode", 1, 10);

	EXPECT_ERR(ioctl(s, LIVEUPDATE_IOCTL_CREATE_SESSION, big), EINVAL,
		   "a device command on a session: EINVAL");
	EXPECT_ERR(ioctl(s, _IO(0xBA, 0x01), big), EINVAL, "session nr 1: EINVAL");
	EXPECT_ERR(ioctl(s, _IO(0xBA, 0x3f), big), EINVAL, "session nr 0x3f: EINVAL");
	EXPECT_ERR(ioctl(s, _IO(0xBA, 0x44), big), EINVAL,
		   "RETRIEVE_INTO_FD (0x44, not mainline): EINVAL");
	EXPECT_ERR(ioctl(s, _IO(0xBB, 0x41), big), ENOTTY, "session, wrong type byte: ENOTTY");
	EXPECT_ERR(ioctl(s, _IOWR(0xBA, 0x41, struct liveupdate_session_retrieve_fd), big),
		   ENOTTY, "session, direction and size bits: ENOTTY");
	EXPECT_ERR(ioctl(s, LIVEUPDATE_SESSION_RETRIEVE_FD, NULL), EFAULT,
		   "RETRIEVE_FD on outgoing with NULL: EFAULT (size is read before the type check)");

	/* Type before size: an outgoing session refuses RETRIEVE_FD and FINISH with EINVAL
	 * whatever their struct says. */
	*(uint32_t *)big = 4;
	EXPECT_ERR(ioctl(s, LIVEUPDATE_SESSION_RETRIEVE_FD, big), EINVAL,
		   "RETRIEVE_FD on outgoing, size 4: EINVAL");
	*(uint32_t *)big = 24;
	big[20] = 1;
	EXPECT_ERR(ioctl(s, LIVEUPDATE_SESSION_RETRIEVE_FD, big), EINVAL,
		   "RETRIEVE_FD on outgoing, dirty tail: EINVAL (type before size)");
	EXPECT_ERR(ioctl(s, LIVEUPDATE_SESSION_FINISH, big), EINVAL,
		   "FINISH on outgoing, dirty tail: EINVAL (type before size)");
	{
		struct liveupdate_session_retrieve_fd *at = (void *)(edge - 16);

		at->size = 64;
		at->token = 1;
		EXPECT_ERR(ioctl(s, LIVEUPDATE_SESSION_RETRIEVE_FD, at), EINVAL,
			   "RETRIEVE_FD on outgoing, tail unmapped: EINVAL (type before copy)");
		at->size = 64;
		at->fd = memfd;
		EXPECT_ERR(ioctl(s, LIVEUPDATE_SESSION_PRESERVE_FD, at), EFAULT,
			   "PRESERVE_FD on outgoing, tail unmapped: EFAULT");
	}
	{
		struct liveupdate_session_preserve_fd p = { .size = 15, .fd = memfd, .token = 1 };
		unsigned char wide[32] = { 0 };

		EXPECT_ERR(ioctl(s, LIVEUPDATE_SESSION_PRESERVE_FD, &p), EINVAL,
			   "PRESERVE_FD size 15: EINVAL");
		p.size = 32;
		memcpy(wide, &p, sizeof(p));
		wide[31] = 1;
		EXPECT_ERR(ioctl(s, LIVEUPDATE_SESSION_PRESERVE_FD, wide), E2BIG,
			   "PRESERVE_FD dirty tail: E2BIG");
	}

	gn.size = 16;
	EXPECT_ERR(ioctl(s, LIVEUPDATE_SESSION_GET_NAME, &gn), EINVAL, "GET_NAME size 16: EINVAL");
	gn.size = sizeof(gn);
	gn.reserved = 1;
	EXPECT_ERR(ioctl(s, LIVEUPDATE_SESSION_GET_NAME, &gn), EINVAL,
		   "GET_NAME reserved != 0: EINVAL");
	gn.reserved = 0;
	EXPECT_ERR(ioctl(s, LIVEUPDATE_SESSION_GET_NAME, read_only_copy(&gn, sizeof(gn))),
		   EFAULT, "GET_NAME into a read-only struct: EFAULT");
	{
		unsigned char wide[80] = { 0 };

		((struct liveupdate_session_get_name *)wide)->size = 80;
		memset(wide + 8, 0x55, 64);
		EXPECT_OK(ioctl(s, LIVEUPDATE_SESSION_GET_NAME, wide), "GET_NAME with 80 bytes");
		CHECK(strcmp((char *)wide + 8, "decode") == 0 && wide[8 + 7] == 0,
		      "GET_NAME fills the whole name field");
	}
	close(memfd);
	close(s);
}

static void preserve_rules(int dev)
{
	int s = EXPECT_OK(luo_create_session(dev, "preserve"), "create preserve");
	int s2 = EXPECT_OK(luo_create_session(dev, "preserve-2"), "create preserve-2");
	int m = luo_memfd("p1", 11, 100), m2 = luo_memfd("p2", 12, 100);
	int null = open("/dev/null", O_RDWR);
	int dir = open("/", O_RDONLY | O_DIRECTORY);
	int file = open(self_path, O_RDONLY);
	char path[64];
	int again, copy, s3, ro_session;

	if (m < 0 || m2 < 0 || null < 0 || dir < 0 || file < 0)
		FAIL("setup: %s", strerror(errno));
	EXPECT_ERR(luo_preserve_fd(s, null, 1), ENOENT, "/dev/null: ENOENT (no handler)");
	EXPECT_ERR(luo_preserve_fd(s, dir, 1), ENOENT, "a directory: ENOENT");
	EXPECT_ERR(luo_preserve_fd(s, file, 1), ENOENT, "a linked regular file: ENOENT");
	EXPECT_ERR(luo_preserve_fd(s, 1000, 1), EBADF, "a closed descriptor: EBADF");
	EXPECT_ERR(luo_preserve_fd(s, -1, 1), EBADF, "descriptor -1: EBADF");
	EXPECT_OK(luo_preserve_fd(s, m, 0), "token 0 is allowed");
	EXPECT_ERR(luo_preserve_fd(s, m2, 0), EEXIST, "a token used in the session: EEXIST");
	EXPECT_ERR(luo_preserve_fd(s, 1000, 0), EEXIST,
		   "used token and a bad descriptor: EEXIST (token checked first)");
	EXPECT_OK(luo_preserve_fd(s2, m2, 0), "the same token in another session");
	EXPECT_OK(luo_preserve_fd(s, luo_memfd("p3", 13, 1), UINT64_MAX), "token UINT64_MAX");

	copy = dup(m);
	EXPECT_ERR(luo_preserve_fd(s, copy, 5), EBUSY, "the same memfd through a dup: EBUSY");
	EXPECT_ERR(luo_preserve_fd(s2, m, 5), EBUSY, "the same memfd in a second session: EBUSY");
	snprintf(path, sizeof(path), "/proc/self/fd/%d", m);
	again = open(path, O_RDWR);
	if (again < 0)
		FAIL("reopen %s: %s", path, strerror(errno));
	CHECK(!luo_same_file(again, m), "reopening gives a new open file description");
	EXPECT_ERR(luo_preserve_fd(s2, again, 6), EBUSY,
		   "the same memfd through another open file description: EBUSY");
	close(again);
	close(copy);
	close(s);
	s3 = EXPECT_OK(luo_create_session(dev, "preserve-3"), "create preserve-3");
	EXPECT_OK(luo_preserve_fd(s3, m, 1),
		  "the session closed: its memfd can be preserved again at once");

	{
		struct liveupdate_session_preserve_fd p = { .size = sizeof(p), .token = 42 };
		int m3 = luo_memfd("p4", 14, 1);

		p.fd = m3;
		ro_session = s3;
		EXPECT_ERR(ioctl(ro_session, LIVEUPDATE_SESSION_PRESERVE_FD,
				 read_only_copy(&p, sizeof(p))),
			   EFAULT, "PRESERVE_FD from a read-only struct: EFAULT on copy-back");
		EXPECT_ERR(luo_preserve_fd(s3, luo_memfd("p5", 15, 1), 42), EEXIST,
			   "... and the file stayed preserved");
		close(m3);
	}
	/* luod takes sockets (fdref-v1), but not its own connections: as in the kernel, a
	 * session or device descriptor has no handler. */
	EXPECT_ERR(luo_preserve_fd(s2, s3, 7), ENOENT, "a session descriptor: ENOENT");
	EXPECT_ERR(luo_preserve_fd(s2, dev, 8), ENOENT, "the device descriptor: ENOENT");
	EXPECT_ERR(luo_preserve_fd(s3, s3, 7), ENOENT, "a session into itself: ENOENT");
	close(s2);
	close(s3);
	close(m);
	close(m2);
	close(null);
	close(dir);
	close(file);
}

/* Fill the descriptor table up to RLIMIT_NOFILE; returns how many were added. */
static int fill_fds(int *extra, int max)
{
	int n = 0;

	while (n < max) {
		int fd = dup(0);

		if (fd < 0) {
			if (errno != EMFILE)
				FAIL("dup: %s", strerror(errno));
			break;
		}
		extra[n++] = fd;
	}
	return n;
}

static void emfile_rules(int dev)
{
	struct rlimit old;
	int extra[64], n, s, m;

	s = EXPECT_OK(luo_create_session(dev, "emfile"), "create emfile");
	m = luo_memfd("emfile", 1, 1);
	getrlimit(RLIMIT_NOFILE, &old);
	luo_set_fd_limit(luo_fds_open() + 8);
	n = fill_fds(extra, 64);
	CHECK(dup(0) < 0 && errno == EMFILE, "descriptor table full");
	EXPECT_ERR(luo_create_session(dev, "emfile-2"), EMFILE, "CREATE_SESSION: EMFILE");
	EXPECT_ERR(luo_create_session(dev, ""), EMFILE,
		   "CREATE_SESSION with a bad name: EMFILE (the fd is reserved first)");
	EXPECT_ERR(luo_retrieve_fd(s, 1), EINVAL,
		   "RETRIEVE_FD on outgoing: EINVAL (type check before the reservation)");
	EXPECT_OK(luo_preserve_fd(s, m, 1), "PRESERVE_FD needs no new descriptor: it works");
	for (int i = 0; i < n; i++)
		close(extra[i]);
	setrlimit(RLIMIT_NOFILE, &old);
	close(EXPECT_OK(luo_create_session(dev, "emfile-2"),
			"room again: nothing was created before"));
	close(m);
	close(s);
}

struct clone_arg {
	int session, memfd;
};

static int cloned(void *p)
{
	struct clone_arg *a = p;

	return luo_preserve_fd(a->session, a->memfd, 88) == 0 ? 0 : 1;
}

static void fork_exec_rules(int dev)
{
	int s = EXPECT_OK(luo_create_session(dev, "forked"), "create forked");
	int m = luo_memfd("forked", 21, 4096);
	pid_t pid;
	int pipefd[2];
	char c, fdtext[16];

	pid = fork();
	if (pid == 0)
		_exit(luo_preserve_fd(s, m, 1) == 0 ? 0 : 1);
	reap_ok(pid, "a forked child preserves into an inherited session");
	EXPECT_ERR(luo_preserve_fd(s, luo_memfd("x", 1, 1), 1), EEXIST,
		   "the parent sees the child's file");

	if (pipe(pipefd) < 0)
		FAIL("pipe");
	pid = fork();
	if (pid == 0) {
		close(pipefd[1]);
		if (read(pipefd[0], &c, 1) < 0)
			_exit(2);
		_exit(0);
	}
	close(pipefd[0]);
	close(s);
	EXPECT_ERR(luo_create_session(dev, "forked"), EEXIST,
		   "the child's copy keeps the session open");
	if (write(pipefd[1], "x", 1) != 1)
		FAIL("write");
	close(pipefd[1]);
	reap_ok(pid, "the child exits");
	s = EXPECT_OK(luo_create_session(dev, "forked"),
		      "the last copy closed anywhere: the session is gone");

	{
		/* clone(2) without CLONE_FILES or CLONE_VM: a separate process with a copy of
		 * the descriptor table and of the library's memory. */
		static char stack[64 * 1024];
		struct clone_arg ca = { .session = s, .memfd = luo_memfd("cloned", 88, 8) };

		pid = clone(cloned, stack + sizeof(stack), SIGCHLD, &ca);
		if (pid < 0)
			FAIL("clone: %s", strerror(errno));
		reap_ok(pid, "a clone()d child preserves into an inherited session");
		EXPECT_ERR(luo_preserve_fd(s, luo_memfd("z", 1, 1), 88), EEXIST,
			   "the parent sees the clone's file");
	}
	errno = 12345;
	CHECK(luo_get_name(s, (char[64]){ 0 }) == 0 && errno == 12345,
	      "a successful ioctl leaves errno alone");
	CHECK(fd_cloexec(s), "session descriptors are close-on-exec");
	if (fcntl(s, F_SETFD, 0) < 0)
		FAIL("F_SETFD: %s", strerror(errno));
	snprintf(fdtext, sizeof(fdtext), "%d", s);
	pid = fork();
	if (pid == 0) {
		execl(self_path, self_path, "exec-child", fdtext, "forked", (char *)NULL);
		_exit(3);
	}
	reap_ok(pid, "an exec'd program uses an inherited session (GET_NAME, PRESERVE_FD)");
	EXPECT_ERR(luo_preserve_fd(s, luo_memfd("y", 1, 1), 77), EEXIST,
		   "the exec'd program's file is in the session");
	close(s);
	close(m);
}

static int exec_child(const char *fdtext, const char *name)
{
	int s = atoi(fdtext);
	char got[LIVEUPDATE_SESSION_NAME_LENGTH];
	int m = luo_memfd("exec", 77, 77);

	if (luo_get_name(s, got) < 0 || strcmp(got, name) != 0)
		return 1;
	if (luo_preserve_fd(s, m, 77) < 0)
		return 2;
	return 0;
}

struct thread_arg {
	int dev, id, failures;
};

static void *thread_body(void *p)
{
	struct thread_arg *a = p;
	char name[64], got[64];

	for (int i = 0; i < 40; i++) {
		int s, m;

		snprintf(name, sizeof(name), "thread-%d-%d", a->id, i);
		s = luo_create_session(a->dev, name);
		m = luo_memfd(name, (uint64_t)i, 64);
		if (s < 0 || m < 0 || luo_preserve_fd(s, m, (uint64_t)i) < 0 ||
		    luo_get_name(s, got) < 0 || strcmp(got, name) != 0)
			a->failures++;
		close(m);
		close(s);
	}
	return NULL;
}

static void thread_rules(int dev)
{
	pthread_t t[6];
	struct thread_arg args[6];
	int failures = 0;

	for (int i = 0; i < 6; i++) {
		args[i] = (struct thread_arg){ .dev = dev, .id = i };
		pthread_create(&t[i], NULL, thread_body, &args[i]);
	}
	for (int i = 0; i < 6; i++) {
		pthread_join(t[i], NULL);
		failures += args[i].failures;
	}
	CHECK(failures == 0, "6 threads x 40 sessions concurrently");
}

/* The sessions stage 2 checks; their descriptors are appended to fds. */
static int prepare_update(int dev, int *fds)
{
	int n = 0, s, m;

	s = fds[n++] = EXPECT_OK(luo_create_session(dev, "rules-a"), "create rules-a");
	m = luo_memfd("a1", 1, 5000);
	EXPECT_OK(luo_preserve_fd(s, m, 1), "preserve a1");
	close(m);
	m = luo_memfd("a2", 2, 0);
	EXPECT_OK(luo_preserve_fd(s, m, 2), "preserve a2 (empty)");
	close(m);
	m = luo_memfd("a3", 3, 70000);
	if (lseek(m, 123, SEEK_SET) != 123)
		FAIL("lseek");
	EXPECT_OK(luo_preserve_fd(s, m, 3), "preserve a3 at position 123");
	close(m);

	s = fds[n++] = EXPECT_OK(luo_create_session(dev, "rules-b"), "create rules-b");
	m = luo_memfd("b5", 5, 100);
	EXPECT_OK(luo_preserve_fd(s, m, 5), "preserve b5");
	close(m);

	s = fds[n++] = EXPECT_OK(luo_create_session(dev, "rules-busy"), "create rules-busy");
	m = luo_memfd("busy", 6, 100);
	EXPECT_OK(luo_preserve_fd(s, m, 6), "preserve busy");
	close(m);

	for (int i = 0; i < 4; i++) {
		static const char *names[] = { "rules-c", "rules-d", "rules-e", "rules-emfile" };

		s = fds[n++] = EXPECT_OK(luo_create_session(dev, names[i]), "create %s", names[i]);
		m = luo_memfd(names[i], 7 + (uint64_t)i, 300);
		EXPECT_OK(luo_preserve_fd(s, m, 1), "preserve into %s", names[i]);
		close(m);
	}

	s = EXPECT_OK(luo_create_session(dev, "rules-closed"), "create rules-closed");
	m = luo_memfd("closed", 9, 10);
	EXPECT_OK(luo_preserve_fd(s, m, 1), "preserve into rules-closed");
	close(m);
	close(s); /* an outgoing session closed before the update: discarded */
	return n;
}

static void stage_1(void)
{
	int dev, fds[16], n;

	close(luo_open_or_skip());
	device_rules();
	dev = luo_open_or_skip();
	decoding_rules(dev);
	name_rules(dev);
	session_decoding_rules(dev);
	preserve_rules(dev);
	emfile_rules(dev);
	fork_exec_rules(dev);
	thread_rules(dev);
	n = prepare_update(dev, fds);
	close(dev);
	{
		/* Closing the device does nothing to sessions. */
		char got[64];

		EXPECT_OK(luo_get_name(fds[0], got), "sessions outlive the device descriptor");
	}
	luo_daemonize_holder(fds, n);
	luo_passed();
}

/* ---------------------------------------------------------------- stage 2 */

static void verify(int fd, uint64_t seed, size_t size, const char *what)
{
	char why[128];

	if (luo_verify(fd, seed, size, why, sizeof(why)) < 0)
		FAIL("%s: %s", what, why);
	luo_ok("%s: every byte, through mmap and read", what);
}

static void stage_2(void)
{
	int dev = luo_open_or_skip();
	int a, a1, a1b, a2, a3, b, busy, fresh, c, e, emf, next, m;
	char got[64];
	struct liveupdate_ioctl_retrieve_session rs = { .size = sizeof(rs) };
	unsigned char wide[32] = { 0 };

	EXPECT_ERR(luo_retrieve_session(dev, "no-such-session"), ENOENT, "missing session: ENOENT");
	EXPECT_ERR(luo_retrieve_session(dev, "rules-closed"), ENOENT,
		   "an outgoing session closed before the update is gone");
	memset(rs.name, 'r', sizeof(rs.name));
	EXPECT_ERR(ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, &rs), ENOENT,
		   "RETRIEVE_SESSION does not validate the name length: ENOENT");

	a = EXPECT_OK(luo_retrieve_session(dev, "rules-a"), "retrieve rules-a");
	CHECK(fd_cloexec(a), "a retrieved session is close-on-exec");
	EXPECT_ERR(luo_retrieve_session(dev, "rules-a"), EINVAL, "retrieve it again: EINVAL");
	EXPECT_OK(luo_get_name(a, got), "GET_NAME on an incoming session");
	CHECK(strcmp(got, "rules-a") == 0, "its name");
	m = luo_memfd("late", 1, 1);
	EXPECT_ERR(luo_preserve_fd(a, m, 10), EINVAL, "PRESERVE_FD on incoming: EINVAL");
	((struct liveupdate_session_preserve_fd *)wide)->size = 32;
	((struct liveupdate_session_preserve_fd *)wide)->fd = m;
	wide[30] = 1;
	EXPECT_ERR(ioctl(a, LIVEUPDATE_SESSION_PRESERVE_FD, wide), EINVAL,
		   "PRESERVE_FD on incoming, dirty tail: EINVAL (type before size)");
	memset(wide, 0, sizeof(wide));
	((struct liveupdate_session_retrieve_fd *)wide)->size = 32;
	((struct liveupdate_session_retrieve_fd *)wide)->token = 1;
	wide[30] = 1;
	EXPECT_ERR(ioctl(a, LIVEUPDATE_SESSION_RETRIEVE_FD, wide), E2BIG,
		   "RETRIEVE_FD dirty tail: E2BIG");
	((struct liveupdate_session_retrieve_fd *)wide)->size = 15;
	EXPECT_ERR(ioctl(a, LIVEUPDATE_SESSION_RETRIEVE_FD, wide), EINVAL,
		   "RETRIEVE_FD size 15: EINVAL");
	EXPECT_ERR(luo_retrieve_fd(a, 99), ENOENT, "unknown token: ENOENT");

	a1 = EXPECT_OK(luo_retrieve_fd(a, 1), "retrieve a1");
	CHECK(fd_cloexec(a1), "a retrieved file is close-on-exec");
	verify(a1, 1, 5000, "a1");
	a1b = EXPECT_OK(luo_retrieve_fd(a, 1), "retrieve a1 again: success");
	CHECK(a1b != a1 && luo_same_file(a1, a1b),
	      "a repeated RETRIEVE_FD gives a new descriptor of the same open file");
	a3 = EXPECT_OK(luo_retrieve_fd(a, 3), "retrieve a3");
	CHECK(lseek(a3, 0, SEEK_CUR) == 123, "a3's file position is restored");
	verify(a3, 3, 70000, "a3");
	a2 = EXPECT_OK(luo_retrieve_fd(a, 2), "retrieve a2");
	verify(a2, 2, 0, "a2 (empty)");
	{
		struct liveupdate_session_finish f = { .size = sizeof(f), .reserved = 1 };

		EXPECT_ERR(ioctl(a, LIVEUPDATE_SESSION_FINISH, &f), EINVAL,
			   "FINISH with reserved != 0: EINVAL");
	}
	EXPECT_OK(luo_finish(a), "FINISH");
	EXPECT_OK(luo_finish(a), "FINISH again: success");
	EXPECT_ERR(luo_retrieve_fd(a, 1), ENOENT, "RETRIEVE_FD after FINISH: ENOENT");
	EXPECT_OK(luo_get_name(a, got), "GET_NAME after FINISH");
	verify(a1, 1, 5000, "a1 after FINISH");
	fresh = EXPECT_OK(luo_create_session(dev, "rules-a"),
			  "a new outgoing session may take an incoming session's name");
	close(fresh);
	close(a1);
	close(a1b);
	close(a2);
	close(a3);
	close(a);
	EXPECT_ERR(luo_retrieve_session(dev, "rules-a"), ENOENT,
		   "a finished session, closed: ENOENT");

	b = EXPECT_OK(luo_retrieve_session(dev, "rules-b"), "retrieve rules-b");
	EXPECT_OK(luo_finish(b), "FINISH before any file was retrieved");
	EXPECT_ERR(luo_retrieve_fd(b, 5), ENOENT, "the unretrieved file was discarded");
	close(b);

	busy = EXPECT_OK(luo_retrieve_session(dev, "rules-busy"), "retrieve rules-busy");
	m = EXPECT_OK(luo_retrieve_fd(busy, 6), "retrieve busy's memfd");
	fresh = EXPECT_OK(luo_create_session(dev, "rules-busy-next"), "create rules-busy-next");
	EXPECT_ERR(luo_preserve_fd(fresh, m, 1), EBUSY,
		   "a retrieved file cannot be preserved again before FINISH: EBUSY");
	EXPECT_OK(luo_finish(busy), "FINISH rules-busy");
	EXPECT_OK(luo_preserve_fd(fresh, m, 1), "after FINISH it can");
	close(fresh);
	close(m);
	close(busy);

	c = EXPECT_OK(luo_retrieve_session(dev, "rules-c"), "retrieve rules-c");
	close(EXPECT_OK(luo_retrieve_fd(c, 1), "retrieve rules-c's file"));
	close(c);
	EXPECT_ERR(luo_retrieve_session(dev, "rules-c"), ENOENT,
		   "closing a retrieved session finishes it: ENOENT at once");

	memset(&rs, 0, sizeof(rs));
	rs.size = sizeof(rs);
	strcpy((char *)rs.name, "rules-e");
	EXPECT_ERR(ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, read_only_copy(&rs, sizeof(rs))),
		   EFAULT, "RETRIEVE_SESSION into a read-only struct: EFAULT");
	EXPECT_ERR(luo_retrieve_session(dev, "rules-e"), ENOENT,
		   "... and, as in the kernel, that finished the session");

	{
		struct rlimit old;
		int extra[64], n;

		getrlimit(RLIMIT_NOFILE, &old);
		luo_set_fd_limit(luo_fds_open() + 8);
		n = fill_fds(extra, 64);
		EXPECT_ERR(luo_retrieve_session(dev, "rules-emfile"), EMFILE,
			   "RETRIEVE_SESSION with no descriptor free: EMFILE");
		close(extra[--n]);
		emf = EXPECT_OK(luo_retrieve_session(dev, "rules-emfile"),
				"one free: the session was not consumed");
		EXPECT_ERR(luo_retrieve_fd(emf, 1), EMFILE, "RETRIEVE_FD with none free: EMFILE");
		close(extra[--n]);
		e = EXPECT_OK(luo_retrieve_fd(emf, 1), "one free: retrieved");
		verify(e, 10, 300, "rules-emfile's file");
		close(e);
		for (int i = 0; i < n; i++)
			close(extra[i]);
		setrlimit(RLIMIT_NOFILE, &old);
		EXPECT_OK(luo_finish(emf), "FINISH rules-emfile");
		close(emf);
	}

	next = EXPECT_OK(luo_create_session(dev, "rules-next"), "create rules-next");
	m = luo_memfd("next", 31, 4097);
	EXPECT_OK(luo_preserve_fd(next, m, 31), "preserve into rules-next");
	close(m);
	close(dev);
	/* rules-d is left alone: incoming, never retrieved. */
	luo_daemonize_holder(&next, 1);
	luo_passed();
}

static void stage_3(void)
{
	int dev = luo_open_or_skip();
	int next, m;

	EXPECT_ERR(luo_retrieve_session(dev, "rules-d"), ENOENT,
		   "an incoming session never retrieved is not carried to the next update");
	EXPECT_ERR(luo_retrieve_session(dev, "rules-a"), ENOENT, "nor is a finished one");
	next = EXPECT_OK(luo_retrieve_session(dev, "rules-next"), "retrieve rules-next");
	m = EXPECT_OK(luo_retrieve_fd(next, 31), "retrieve its file");
	verify(m, 31, 4097, "rules-next's file");
	EXPECT_OK(luo_finish(next), "FINISH rules-next");
	close(m);
	close(next);
	close(dev);
	luo_passed();
}

int main(int argc, char **argv)
{
	self_path = "/proc/self/exe";
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 4 && strcmp(argv[1], "exec-child") == 0)
		return exec_child(argv[2], argv[3]);
	if (argc != 2) {
		fprintf(stderr, "usage: %s 1|2|3\n", argv[0]);
		return 2;
	}
	switch (atoi(argv[1])) {
	case 1: stage_1(); break;
	case 2: stage_2(); break;
	case 3: stage_3(); break;
	}
	fprintf(stderr, "unknown stage %s\n", argv[1]);
	return 2;
}
