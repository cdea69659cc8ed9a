// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * A line interpreter of /dev/liveupdate operations, for the agreement test: the Rust driver
 * runs the same script through luo-client and through this program (with the preload
 * library), and compares the answers operation by operation.
 *
 * One command per line on stdin, one answer per line on stdout: "0" on success (followed by
 * the name for getname), else the errno number. Descriptors live in named slots.
 *
 *   open SLOT                      open /dev/liveupdate
 *   create DEV SLOT NAME           CREATE_SESSION ("-" is the empty name)
 *   retrieve DEV SLOT NAME         RETRIEVE_SESSION
 *   memfd SLOT SEED SIZE           a memfd of luo_pattern(SEED) bytes
 *   devnull SLOT                   open /dev/null
 *   preserve SESSION FILE TOKEN    PRESERVE_FD
 *   preserve_nofd SESSION TOKEN    PRESERVE_FD of a descriptor that is not open
 *   retrieve_fd SESSION SLOT TOKEN RETRIEVE_FD
 *   verify FILE SEED SIZE          "0" if the file holds exactly those bytes, else "BAD"
 *   finish SESSION                 FINISH
 *   getname SESSION                GET_NAME
 *   raw SLOT CMD SIZE TAIL         ioctl CMD with a zeroed struct of SIZE bytes, `size` = SIZE
 *                                  and the last byte TAIL
 *   close SLOT
 *   smemfd SLOT SEED SIZE          a memfd like `memfd`, made with MFD_ALLOW_SEALING
 *   pipe SLOT                      a pipe's read end (its write end stays open, unnamed)
 *   seek FILE OFFSET               lseek(SEEK_SET)
 *   addseals FILE BITS             F_ADD_SEALS
 *   reopen_ro SLOT FILE            FILE opened again read-only through /proc/self/fd
 *   info FILE                      "0 size=N pos=N seals=0xN access=rw|ro|wo[+append]"
 */
#define _GNU_SOURCE
#include "luo_test.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SLOTS 128

static struct {
	char name[32];
	int fd;
} slots[SLOTS];

static int *slot(const char *name, int create)
{
	for (int i = 0; i < SLOTS; i++)
		if (slots[i].name[0] && strcmp(slots[i].name, name) == 0)
			return &slots[i].fd;
	if (!create)
		return NULL;
	for (int i = 0; i < SLOTS; i++) {
		if (!slots[i].name[0]) {
			snprintf(slots[i].name, sizeof(slots[i].name), "%s", name);
			slots[i].fd = -1;
			return &slots[i].fd;
		}
	}
	return NULL;
}

static int get(const char *name)
{
	int *fd = slot(name, 0);

	return fd ? *fd : -1;
}

static void answer(int r)
{
	if (r < 0)
		printf("%d\n", errno);
	else
		printf("0\n");
}

static void store(const char *name, int fd)
{
	int *s = slot(name, 1);

	if (s && fd >= 0)
		*s = fd;
	answer(fd);
}

int main(void)
{
	char line[512];

	setvbuf(stdout, NULL, _IOLBF, 0);
	while (fgets(line, sizeof(line), stdin)) {
		char op[32] = "", a[64] = "", b[64] = "", c[64] = "", d[64] = "";
		int n = sscanf(line, "%31s %63s %63s %63s %63s", op, a, b, c, d);

		if (n < 1)
			continue;
		errno = 0;
		if (!strcmp(op, "open")) {
			store(a, open(LUO_DEVICE, O_RDWR | O_CLOEXEC));
		} else if (!strcmp(op, "create") || !strcmp(op, "retrieve")) {
			const char *name = strcmp(c, "-") ? c : "";

			store(b, op[0] == 'c' ? luo_create_session(get(a), name)
					      : luo_retrieve_session(get(a), name));
		} else if (!strcmp(op, "memfd")) {
			store(a, luo_memfd(a, strtoull(b, NULL, 0), strtoull(c, NULL, 0)));
		} else if (!strcmp(op, "devnull")) {
			store(a, open("/dev/null", O_RDWR | O_CLOEXEC));
		} else if (!strcmp(op, "preserve")) {
			answer(luo_preserve_fd(get(a), get(b), strtoull(c, NULL, 0)));
		} else if (!strcmp(op, "preserve_nofd")) {
			answer(luo_preserve_fd(get(a), -1, strtoull(b, NULL, 0)));
		} else if (!strcmp(op, "retrieve_fd")) {
			store(b, luo_retrieve_fd(get(a), strtoull(c, NULL, 0)));
		} else if (!strcmp(op, "verify")) {
			char why[128];

			printf("%s\n", luo_verify(get(a), strtoull(b, NULL, 0), strtoull(c, NULL, 0),
						  why, sizeof(why)) == 0 ? "0" : "BAD");
		} else if (!strcmp(op, "finish")) {
			answer(luo_finish(get(a)));
		} else if (!strcmp(op, "getname")) {
			char name[LIVEUPDATE_SESSION_NAME_LENGTH];

			if (luo_get_name(get(a), name) < 0)
				answer(-1);
			else
				printf("0 %s\n", name);
		} else if (!strcmp(op, "raw")) {
			size_t size = strtoull(c, NULL, 0);
			unsigned char *buf = calloc(1, size + 4);
			uint32_t size32 = (uint32_t)size;

			memcpy(buf, &size32, 4);
			if (size > 4)
				buf[size - 1] = (unsigned char)strtoul(d, NULL, 0);
			answer(ioctl(get(a), strtoul(b, NULL, 0), buf));
			free(buf);
		} else if (!strcmp(op, "close")) {
			int *fd = slot(a, 0);

			answer(fd ? close(*fd) : -1);
			if (fd)
				*fd = -1;
		} else if (!strcmp(op, "smemfd")) {
			int fd = memfd_create(a, MFD_CLOEXEC | MFD_ALLOW_SEALING);
			unsigned long long seed = strtoull(b, NULL, 0), size = strtoull(c, NULL, 0);

			for (unsigned long long i = 0; fd >= 0 && i < size; i++) {
				unsigned char byte = luo_pattern(seed, i);

				if (write(fd, &byte, 1) != 1) {
					close(fd);
					fd = -1;
				}
			}
			store(a, fd);
		} else if (!strcmp(op, "pipe")) {
			int p[2];

			store(a, pipe2(p, O_CLOEXEC) < 0 ? -1 : p[0]);
		} else if (!strcmp(op, "seek")) {
			answer(lseek(get(a), strtoll(b, NULL, 0), SEEK_SET) < 0 ? -1 : 0);
		} else if (!strcmp(op, "addseals")) {
			answer(fcntl(get(a), F_ADD_SEALS, (int)strtol(b, NULL, 0)));
		} else if (!strcmp(op, "reopen_ro")) {
			char path[64];

			snprintf(path, sizeof(path), "/proc/self/fd/%d", get(b));
			store(a, open(path, O_RDONLY | O_CLOEXEC));
		} else if (!strcmp(op, "info")) {
			int fd = get(a), seals = fcntl(fd, F_GET_SEALS), fl = fcntl(fd, F_GETFL);
			off_t pos = lseek(fd, 0, SEEK_CUR);
			struct stat st;

			if (fstat(fd, &st) < 0 || seals < 0 || fl < 0 || pos < 0) {
				answer(-1);
			} else {
				int acc = fl & O_ACCMODE;

				printf("0 size=%lld pos=%lld seals=%#x access=%s%s\n", (long long)st.st_size,
				       (long long)pos, (unsigned)seals,
				       acc == O_RDWR ? "rw" : acc == O_WRONLY ? "wo" : "ro",
				       fl & O_APPEND ? "+append" : "");
			}
		} else {
			printf("unknown %s\n", op);
		}
	}
	return 0;
}
