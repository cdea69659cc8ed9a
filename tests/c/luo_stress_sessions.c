// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * Stress, two stages: 2,000 sessions of one memfd each, handed over together, with a
 * descriptor limit only 32 above what the program itself holds (every session descriptor,
 * the device, the state session, and two transient descriptors). Nothing the library does
 * may leak a descriptor or need more than the kernel would.
 */
#define _GNU_SOURCE
#include "luo_test.h"

#include <stdlib.h>
#include <unistd.h>

#define STATE "stress_sessions_state"
#define N 2000
#define HEADROOM 32

static int fds[N + 1];

static size_t size_of(int i)
{
	return 64 + (size_t)(i % 200) * 7;
}

static void set_limit(void)
{
	/* stdio, the device, the state session, N sessions, and two transient ones. */
	unsigned long need = 3 + 1 + 1 + N + 2;

	luo_set_fd_limit(need + HEADROOM);
	printf("# RLIMIT_NOFILE %lu (needs %lu)\n", need + HEADROOM, need);
}

static void stage_1(int dev)
{
	char name[32];

	set_limit();
	for (int i = 0; i < N; i++) {
		int m;

		snprintf(name, sizeof(name), "stress-%d", i);
		fds[i] = luo_create_session(dev, name);
		if (fds[i] < 0)
			FAIL("create %s: %s", name, luo_errname(errno));
		m = luo_memfd(name, (uint64_t)i, size_of(i));
		if (m < 0 || luo_preserve_fd(fds[i], m, (uint64_t)i) < 0)
			FAIL("preserve into %s: %s", name, luo_errname(errno));
		close(m);
	}
	luo_ok("%d sessions created, one memfd each", N);
	luo_save_next_stage(dev, STATE, 2, &fds[N]);
	luo_ok("state session saved");
	close(dev);
	luo_daemonize_holder(fds, N + 1);
	luo_passed();
}

static void stage_2(int dev, int state)
{
	char name[32], why[128];

	set_limit();
	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "stress-%d", i);
		fds[i] = luo_retrieve_session(dev, name);
		if (fds[i] < 0)
			FAIL("retrieve %s: %s", name, luo_errname(errno));
	}
	luo_ok("%d sessions retrieved, all open at once", N);
	for (int i = 0; i < N; i++) {
		int m = luo_retrieve_fd(fds[i], (uint64_t)i);

		if (m < 0)
			FAIL("retrieve the file of session %d: %s", i, luo_errname(errno));
		if (luo_verify(m, (uint64_t)i, size_of(i), why, sizeof(why)) < 0)
			FAIL("session %d: %s", i, why);
		close(m);
		if (luo_finish(fds[i]) < 0)
			FAIL("finish session %d: %s", i, luo_errname(errno));
	}
	luo_ok("%d files verified through mmap and read, %d sessions finished", N, N);
	for (int i = 0; i < N; i++)
		close(fds[i]);
	luo_stage_2_done(dev, state);
}

int main(int argc, char **argv)
{
	luo_two_stage_main(argc, argv, STATE, stage_1, stage_2);
}
