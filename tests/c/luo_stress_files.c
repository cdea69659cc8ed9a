// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * Stress, two stages: 500 memfds in one session, with a descriptor limit only 32 above what
 * the program itself holds. Stage 2 holds every retrieved file at once, finishes the session
 * with them open, and checks they still hold their bytes.
 */
#define _GNU_SOURCE
#include "luo_test.h"

#include <stdlib.h>
#include <unistd.h>

#define STATE "stress_files_state"
#define SESSION "stress-files"
#define N 500
#define HEADROOM 32

static int files[N];

static size_t size_of(int i)
{
	return 4096 + (size_t)i * 13;
}

static void set_limit(void)
{
	/* stdio, the device, the state session, the session, N files, two transient ones. */
	unsigned long need = 3 + 1 + 1 + 1 + N + 2;

	luo_set_fd_limit(need + HEADROOM);
	printf("# RLIMIT_NOFILE %lu (needs %lu)\n", need + HEADROOM, need);
}

static void stage_1(int dev)
{
	int fds[2];

	set_limit();
	fds[0] = EXPECT_OK(luo_create_session(dev, SESSION), "create " SESSION);
	for (int i = 0; i < N; i++) {
		int m = luo_memfd("file", 1000 + (uint64_t)i, size_of(i));

		if (m < 0 || luo_preserve_fd(fds[0], m, 1000 + (uint64_t)i) < 0)
			FAIL("preserve file %d: %s", i, luo_errname(errno));
		close(m);
	}
	luo_ok("%d memfds preserved in one session", N);
	luo_save_next_stage(dev, STATE, 2, &fds[1]);
	luo_ok("state session saved");
	close(dev);
	luo_daemonize_holder(fds, 2);
	luo_passed();
}

static void stage_2(int dev, int state)
{
	char why[128];
	int s;

	set_limit();
	s = EXPECT_OK(luo_retrieve_session(dev, SESSION), "retrieve " SESSION);
	for (int i = N - 1; i >= 0; i--) {
		files[i] = luo_retrieve_fd(s, 1000 + (uint64_t)i);
		if (files[i] < 0)
			FAIL("retrieve file %d: %s", i, luo_errname(errno));
	}
	luo_ok("%d files retrieved (newest first), all open at once", N);
	for (int i = 0; i < N; i++)
		if (luo_verify(files[i], 1000 + (uint64_t)i, size_of(i), why, sizeof(why)) < 0)
			FAIL("file %d: %s", i, why);
	luo_ok("%d files verified through mmap and read", N);
	EXPECT_OK(luo_finish(s), "finish " SESSION);
	for (int i = 0; i < N; i += 97)
		if (luo_verify(files[i], 1000 + (uint64_t)i, size_of(i), why, sizeof(why)) < 0)
			FAIL("file %d after FINISH: %s", i, why);
	luo_ok("retrieved files keep their bytes after FINISH");
	for (int i = 0; i < N; i++)
		close(files[i]);
	close(s);
	luo_stage_2_done(dev, state);
}

int main(int argc, char **argv)
{
	luo_two_stage_main(argc, argv, STATE, stage_1, stage_2);
}
