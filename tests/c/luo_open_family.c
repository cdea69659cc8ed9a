// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * Every entry point through which a C program opens a path, called directly: open, open64,
 * openat, openat64 and the fortified __open_2, __open64_2, __openat_2, __openat64_2. For
 * /dev/liveupdate each must reach luod (the first open succeeds, every other one while it is
 * open is EBUSY; without the library each would be ENOENT here), must honour O_CLOEXEC, and
 * for any other path must behave as libc does.
 */
#define _GNU_SOURCE
#include "luo_test.h"

#include <fcntl.h>
#include <unistd.h>

/* glibc's fortified entry points (declared in bits/fcntl2.h only under _FORTIFY_SOURCE). */
extern int __open_2(const char *path, int flags);
extern int __open64_2(const char *path, int flags);
extern int __openat_2(int dirfd, const char *path, int flags);
extern int __openat64_2(int dirfd, const char *path, int flags);

static volatile int rdwr = O_RDWR;

static int via(int which, int dirfd, const char *path, int flags)
{
	switch (which) {
	case 0: return open(path, flags);
	case 1: return open64(path, flags);
	case 2: return openat(dirfd, path, flags);
	case 3: return openat64(dirfd, path, flags);
	case 4: return __open_2(path, flags);
	case 5: return __open64_2(path, flags);
	case 6: return __openat_2(dirfd, path, flags);
	default: return __openat64_2(dirfd, path, flags);
	}
}

static const char *names[] = {
	"open", "open64", "openat", "openat64", "__open_2", "__open64_2", "__openat_2",
	"__openat64_2",
};

int main(void)
{
	int dev_dir, fd, other;

	setvbuf(stdout, NULL, _IOLBF, 0);
	close(luo_open_or_skip());
	dev_dir = EXPECT_OK(open("/dev", O_RDONLY | O_DIRECTORY), "open /dev");
	for (int which = 0; which < 8; which++) {
		int dirfd = which % 4 >= 2 ? AT_FDCWD : -1;

		fd = EXPECT_OK(via(which, dirfd, LUO_DEVICE, rdwr), "%s(" LUO_DEVICE ")",
			       names[which]);
		CHECK(!(fcntl(fd, F_GETFD) & FD_CLOEXEC), "%s: no O_CLOEXEC, inherited by exec",
		      names[which]);
		for (int again = 0; again < 8; again++)
			EXPECT_ERR(via(again, dirfd, LUO_DEVICE, rdwr), EBUSY,
				   "%s, then %s: EBUSY", names[which], names[again]);
		if (which >= 2 && which != 4 && which != 5)
			EXPECT_ERR(via(which, dev_dir, "liveupdate", rdwr), EBUSY,
				   "%s(/dev fd, \"liveupdate\"): EBUSY", names[which]);
		close(fd);
		fd = EXPECT_OK(via(which, dirfd, LUO_DEVICE, rdwr | O_CLOEXEC),
			       "%s(" LUO_DEVICE ", O_CLOEXEC)", names[which]);
		CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC, "%s: O_CLOEXEC honoured", names[which]);
		close(fd);
		other = EXPECT_OK(via(which, dirfd, "/dev/null", rdwr), "%s(/dev/null) as usual",
				  names[which]);
		CHECK(!isatty(other) && lseek(other, 0, SEEK_CUR) == 0, "%s: a real /dev/null",
		      names[which]);
		close(other);
		EXPECT_ERR(via(which, dirfd, "/dev/no-such-liveupdate", rdwr), ENOENT,
			   "%s of a missing path: ENOENT from libc", names[which]);
	}
	close(dev_dir);
	fd = EXPECT_OK(open(LUO_DEVICE, O_RDWR | O_NONBLOCK), "open with O_NONBLOCK");
	CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK, "O_NONBLOCK honoured");
	close(EXPECT_OK(luo_create_session(fd, "nonblocking"), "a non-blocking device answers"));
	close(fd);
	luo_passed();
}
