// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * The library touches nothing but its own descriptors: LIVEUPDATE_* ioctls on a pipe, a
 * memfd, /dev/null or the program's own SOCK_SEQPACKET socket pair get the real kernel's
 * answer (ENOTTY) and nothing is sent anywhere; other requests on luod descriptors get the
 * answers of the kernel's device and session, not a socket's. And what makes a luod descriptor lives on the socket, not in the process:
 * a session passed to another process over SCM_RIGHTS works there.
 */
#define _GNU_SOURCE
#include "luo_test.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void send_fd(int sock, int fd)
{
	char byte = 'f';
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
		.msg_controllen = sizeof(u.buf),
	};
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &msg, 0) != 1)
		FAIL("sendmsg: %s", strerror(errno));
}

static int recv_fd(int sock)
{
	char byte;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
		.msg_controllen = sizeof(u.buf),
	};
	int fd = -1;

	if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1 || !CMSG_FIRSTHDR(&msg))
		return -1;
	memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&msg)), sizeof(int));
	return fd;
}

int main(void)
{
	struct liveupdate_session_get_name gn = { .size = sizeof(gn) };
	int dev, s, p[2], sv[2], st[2], m, null, status;
	char got[64];
	pid_t pid;

	setvbuf(stdout, NULL, _IOLBF, 0);
	dev = luo_open_or_skip();
	if (pipe(p) < 0 || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, st) < 0)
		FAIL("setup: %s", strerror(errno));
	m = luo_memfd("foreign", 1, 10);
	null = open("/dev/null", O_RDWR);

	EXPECT_ERR(ioctl(p[0], LIVEUPDATE_SESSION_GET_NAME, &gn), ENOTTY, "a pipe: ENOTTY");
	EXPECT_ERR(ioctl(m, LIVEUPDATE_SESSION_GET_NAME, &gn), ENOTTY, "a memfd: ENOTTY");
	EXPECT_ERR(ioctl(null, LIVEUPDATE_IOCTL_CREATE_SESSION, &gn), ENOTTY, "/dev/null: ENOTTY");
	EXPECT_ERR(ioctl(sv[0], LIVEUPDATE_SESSION_GET_NAME, &gn), ENOTTY,
		   "the program's own SEQPACKET pair: ENOTTY");
	EXPECT_ERR(ioctl(st[0], LIVEUPDATE_IOCTL_CREATE_SESSION, &gn), ENOTTY,
		   "the program's own stream pair: ENOTTY");
	EXPECT_ERR(recv(sv[1], got, sizeof(got), MSG_DONTWAIT), EAGAIN,
		   "... and nothing was sent to its peer");
	EXPECT_ERR(ioctl(12345, LIVEUPDATE_SESSION_GET_NAME, &gn), EBADF, "a closed number: EBADF");

	s = EXPECT_OK(luo_create_session(dev, "foreign"), "create foreign");
	/*
	 * Other requests on the device and on a session get the answers of the kernel's own
	 * handlers, which decode by command number only: EINVAL outside their tables, ENOTTY for
	 * a number inside a table with another command word. A socket would answer FIONREAD.
	 */
	memset(&gn, 0, sizeof(gn));
	gn.size = sizeof(gn);
	EXPECT_ERR(ioctl(s, FIONREAD, &gn), EINVAL, "FIONREAD on a session: EINVAL");
	EXPECT_ERR(ioctl(dev, FIONREAD, &gn), EINVAL, "FIONREAD on the device: EINVAL");
	EXPECT_ERR(ioctl(dev, TCGETS, &gn), ENOTTY, "TCGETS on the device: ENOTTY (number 1)");
	EXPECT_ERR(ioctl(s, TCGETS, &gn), EINVAL, "TCGETS on a session: EINVAL");
	EXPECT_ERR(ioctl(s, _IOW(0xAE, 0x41, int), &gn), ENOTTY,
		   "another type's request numbered like RETRIEVE_FD: ENOTTY");
	EXPECT_ERR(ioctl(s, _IO(0xAE, 0x80), &gn), EINVAL,
		   "another type's request outside the table: EINVAL");
	EXPECT_ERR(ioctl(s, _IOW(0xAE, 0x41, int), NULL), EFAULT,
		   "... which reads size first: EFAULT for NULL");
	EXPECT_OK(ioctl(s, FIOCLEX), "FIOCLEX on a session");
	EXPECT_OK(ioctl(s, FIONBIO, &(int){ 1 }), "FIONBIO on a session");
	EXPECT_OK(luo_get_name(s, got), "a non-blocking session still answers");
	CHECK(strcmp(got, "foreign") == 0, "its name");

	pid = fork();
	if (pid == 0) {
		int fd = recv_fd(sv[1]);

		_exit(fd >= 0 && luo_preserve_fd(fd, luo_memfd("passed", 2, 2), 5) == 0 ? 0 : 1);
	}
	send_fd(sv[0], s);
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		FAIL("the child could not use the session it received: %#x", status);
	luo_ok("a session passed over SCM_RIGHTS works in the receiving process");
	EXPECT_ERR(luo_preserve_fd(s, m, 5), EEXIST, "its file is in the session");
	close(s);
	close(dev);
	luo_passed();
}
