// SPDX-License-Identifier: MIT OR Apache-2.0
/* Helpers of luod's C test suite: see luo_test.h. */
#define _GNU_SOURCE
#include "luo_test.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int luo_checks;

void luo_ok(const char *fmt, ...)
{
	va_list ap;

	luo_checks++;
	if (!fmt || !*fmt)
		return;
	printf("ok %d - ", luo_checks);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

void luo_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	printf("not ok %d - %s:%d: ", luo_checks + 1, file, line);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	exit(1);
}

void luo_skip(const char *why)
{
	printf("SKIP: %s\n", why);
	fflush(stdout);
	exit(KSFT_SKIP);
}

void luo_passed(void)
{
	printf("TEST PASSED (%d checks)\n", luo_checks);
	fflush(stdout);
	exit(0);
}

const char *luo_errname(int e)
{
	switch (e) {
	case 0: return "0";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case EINTR: return "EINTR";
	case EIO: return "EIO";
	case E2BIG: return "E2BIG";
	case EBADF: return "EBADF";
	case EAGAIN: return "EAGAIN";
	case ENOMEM: return "ENOMEM";
	case EACCES: return "EACCES";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case EEXIST: return "EEXIST";
	case ENODEV: return "ENODEV";
	case ENOTDIR: return "ENOTDIR";
	case EINVAL: return "EINVAL";
	case ENFILE: return "ENFILE";
	case EMFILE: return "EMFILE";
	case ENOTTY: return "ENOTTY";
	case ENOSPC: return "ENOSPC";
	case EDEADLK: return "EDEADLK";
	case ENOSYS: return "ENOSYS";
	case EPROTO: return "EPROTO";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case ECONNRESET: return "ECONNRESET";
	case ENOTSOCK: return "ENOTSOCK";
	default: {
		static char buf[32];
		snprintf(buf, sizeof(buf), "errno %d", e);
		return buf;
	}
	}
}

/* Flags the compiler cannot see: under _FORTIFY_SOURCE, open() becomes __open_2(). */
volatile int luo_open_flags = O_RDWR;

int luo_open_device(void)
{
	return open(LUO_DEVICE, luo_open_flags);
}

int luo_open_or_skip(void)
{
	int fd = luo_open_device();

	if (fd < 0 && errno == ENOENT)
		luo_skip(LUO_DEVICE " does not exist: no Live Update Orchestrator here (a kernel "
			 "without LUO, or a static binary that LD_PRELOAD cannot reach)");
	if (fd < 0)
		FAIL("open(%s): %s", LUO_DEVICE, luo_errname(errno));
	return fd;
}

static int name_ioctl(int dev, unsigned long cmd, const char *name)
{
	struct liveupdate_ioctl_create_session arg = { .size = sizeof(arg), .fd = -1 };

	snprintf((char *)arg.name, sizeof(arg.name), "%s", name);
	if (ioctl(dev, cmd, &arg) < 0)
		return -1;
	return arg.fd;
}

int luo_create_session(int dev, const char *name)
{
	return name_ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, name);
}

int luo_retrieve_session(int dev, const char *name)
{
	return name_ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, name);
}

int luo_preserve_fd(int session, int fd, uint64_t token)
{
	struct liveupdate_session_preserve_fd arg = {
		.size = sizeof(arg), .fd = fd, .token = token,
	};

	return ioctl(session, LIVEUPDATE_SESSION_PRESERVE_FD, &arg);
}

int luo_retrieve_fd(int session, uint64_t token)
{
	struct liveupdate_session_retrieve_fd arg = {
		.size = sizeof(arg), .fd = -1, .token = token,
	};

	if (ioctl(session, LIVEUPDATE_SESSION_RETRIEVE_FD, &arg) < 0)
		return -1;
	return arg.fd;
}

int luo_finish(int session)
{
	struct liveupdate_session_finish arg = { .size = sizeof(arg) };

	return ioctl(session, LIVEUPDATE_SESSION_FINISH, &arg);
}

int luo_get_name(int session, char name[LIVEUPDATE_SESSION_NAME_LENGTH])
{
	struct liveupdate_session_get_name arg = { .size = sizeof(arg) };

	if (ioctl(session, LIVEUPDATE_SESSION_GET_NAME, &arg) < 0)
		return -1;
	memcpy(name, arg.name, LIVEUPDATE_SESSION_NAME_LENGTH);
	return 0;
}

int luo_memfd(const char *name, uint64_t seed, size_t size)
{
	int fd = memfd_create(name, MFD_CLOEXEC);
	unsigned char buf[4096];
	size_t off = 0;

	if (fd < 0)
		return -1;
	while (off < size) {
		size_t n = size - off < sizeof(buf) ? size - off : sizeof(buf);

		for (size_t i = 0; i < n; i++)
			buf[i] = luo_pattern(seed, off + i);
		if (write(fd, buf, n) != (ssize_t)n) {
			close(fd);
			return -1;
		}
		off += n;
	}
	return fd;
}

int luo_verify(int fd, uint64_t seed, size_t size, char *why, size_t why_len)
{
	struct stat st;
	unsigned char buf[4096];
	size_t off = 0;

	if (fstat(fd, &st) < 0) {
		snprintf(why, why_len, "fstat: %s", strerror(errno));
		return -1;
	}
	if ((size_t)st.st_size != size) {
		snprintf(why, why_len, "size %lld, expected %zu", (long long)st.st_size, size);
		return -1;
	}
	if (size > 0) {
		unsigned char *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);

		if (map == MAP_FAILED) {
			snprintf(why, why_len, "mmap: %s", strerror(errno));
			return -1;
		}
		for (size_t i = 0; i < size; i++) {
			if (map[i] != luo_pattern(seed, i)) {
				snprintf(why, why_len, "mmap: byte %zu is %u, expected %u", i,
					 map[i], luo_pattern(seed, i));
				munmap(map, size);
				return -1;
			}
		}
		munmap(map, size);
	}
	while (off < size + 1) {
		ssize_t n = pread(fd, buf, sizeof(buf), (off_t)off);

		if (n < 0) {
			snprintf(why, why_len, "read: %s", strerror(errno));
			return -1;
		}
		if (n == 0)
			break;
		for (ssize_t i = 0; i < n; i++) {
			if (off + i >= size || buf[i] != luo_pattern(seed, off + i)) {
				snprintf(why, why_len, "read: byte %zu differs", off + (size_t)i);
				return -1;
			}
		}
		off += (size_t)n;
	}
	if (off != size) {
		snprintf(why, why_len, "read: %zu bytes, expected %zu", off, size);
		return -1;
	}
	/* And through read(2) at the file position, which retrieve restores. */
	if (lseek(fd, 0, SEEK_SET) != 0 || (size > 0 && read(fd, buf, 1) != 1) ||
	    (size > 0 && buf[0] != luo_pattern(seed, 0))) {
		snprintf(why, why_len, "read(2) from offset 0 failed");
		return -1;
	}
	return 0;
}

int luo_same_file(int a, int b)
{
#ifdef SYS_kcmp
	long r = syscall(SYS_kcmp, getpid(), getpid(), 0 /* KCMP_FILE */, a, b);

	if (r >= 0)
		return r == 0;
#endif
	/* Without kcmp: a shared file position means a shared open file description. */
	off_t saved = lseek(a, 0, SEEK_CUR);
	off_t probe = saved + 12345;
	int same;

	lseek(a, probe, SEEK_SET);
	same = lseek(b, 0, SEEK_CUR) == probe;
	lseek(a, saved, SEEK_SET);
	return same;
}

void luo_set_fd_limit(unsigned long n)
{
	struct rlimit lim;

	if (getrlimit(RLIMIT_NOFILE, &lim) < 0)
		FAIL("getrlimit: %s", strerror(errno));
	lim.rlim_cur = n;
	if (lim.rlim_max != RLIM_INFINITY && lim.rlim_max < n)
		lim.rlim_max = n;
	if (setrlimit(RLIMIT_NOFILE, &lim) < 0)
		FAIL("setrlimit(RLIMIT_NOFILE, %lu): %s", n, strerror(errno));
}

int luo_fds_open(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory's own descriptor */
}

int luo_stage(int dev, const char *state_name, int *state)
{
	char buf[16] = { 0 };
	int memfd;

	*state = luo_retrieve_session(dev, state_name);
	if (*state < 0) {
		if (errno == ENOENT)
			return 1;
		FAIL("retrieve state session %s: %s", state_name, luo_errname(errno));
	}
	memfd = luo_retrieve_fd(*state, LUO_STATE_TOKEN);
	if (memfd < 0)
		FAIL("retrieve the stage memfd: %s", luo_errname(errno));
	if (pread(memfd, buf, sizeof(buf) - 1, 0) <= 0)
		FAIL("read the stage memfd: %s", strerror(errno));
	close(memfd);
	return atoi(buf);
}

void luo_save_next_stage(int dev, const char *state_name, int next, int *state_fd)
{
	char buf[16];
	int memfd = memfd_create("luo-stage", MFD_CLOEXEC);

	if (memfd < 0)
		FAIL("memfd_create: %s", strerror(errno));
	snprintf(buf, sizeof(buf), "%d", next);
	if (write(memfd, buf, strlen(buf)) != (ssize_t)strlen(buf))
		FAIL("write the stage: %s", strerror(errno));
	*state_fd = luo_create_session(dev, state_name);
	if (*state_fd < 0)
		FAIL("create state session %s: %s", state_name, luo_errname(errno));
	if (luo_preserve_fd(*state_fd, memfd, LUO_STATE_TOKEN) < 0)
		FAIL("preserve the stage memfd: %s", luo_errname(errno));
	close(memfd);
}

int luo_detect_stage(int argc, char **argv, int dev, const char *state_name, int *state)
{
	int expected = 0, stage;

	for (int i = 1; i + 1 < argc; i++)
		if (strcmp(argv[i], "--stage") == 0)
			expected = atoi(argv[i + 1]);
	stage = luo_stage(dev, state_name, state);
	if (expected && stage != expected) {
		if (stage == 1)
			FAIL("stage %d requested, but the state session %s cannot be retrieved "
			     "(ENOENT): nothing was handed over", expected, state_name);
		FAIL("stage %d requested, but the state session says stage %d", expected, stage);
	}
	printf("# stage %d\n", stage);
	return stage;
}

int luo_two_stage_main(int argc, char **argv, const char *state_name, void (*stage_1)(int dev),
		       void (*stage_2)(int dev, int state))
{
	int dev, state;

	setvbuf(stdout, NULL, _IOLBF, 0);
	dev = luo_open_or_skip();
	switch (luo_detect_stage(argc, argv, dev, state_name, &state)) {
	case 1: stage_1(dev); break;
	case 2: stage_2(dev, state); break;
	default: break;
	}
	FAIL("unknown stage, or a stage that returned");
}

void luo_stage_2_done(int dev, int state)
{
	EXPECT_OK(luo_finish(state), "finish the state session");
	close(state);
	close(dev);
	luo_passed();
}

static int kept(int fd, const int *fds, int n)
{
	for (int i = 0; i < n; i++)
		if (fds[i] == fd)
			return 1;
	return 0;
}

void luo_daemonize_holder(const int *fds, int n)
{
	pid_t pid;

	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0)
		FAIL("fork: %s", strerror(errno));
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		struct rlimit lim;
		int max = 4096;

		if (null < 0)
			_exit(1);
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
		if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY)
			max = (int)lim.rlim_cur;
		for (int fd = 3; fd < max; fd++)
			if (!kept(fd, fds, n))
				close(fd);
		setsid();
		for (;;)
			pause();
	}
	printf("CHILD %d\n", (int)pid);
	fflush(stdout);
}
