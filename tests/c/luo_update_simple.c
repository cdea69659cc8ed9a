// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * A live update in two stages, in the style of the kernel's own kexec selftests.
 *
 * Stage 1 creates three sessions, preserves memfds of known contents (empty, one byte, a page
 * less one, a page, a little over a mebibyte), stores "2" as the next stage in a memfd of a
 * separate state session, forks a child that keeps every session open, and exits. The
 * update happens (`luoctl reboot` here, a kexec with the kernel). Stage 2 finds itself by
 * retrieving the state session, checks every byte of every file through mmap and read,
 * finishes every session and prints TEST PASSED. Run again with `--stage 2`, it fails: the
 * sessions were finished, there is nothing to retrieve.
 */
#define _GNU_SOURCE
#include "luo_test.h"

#include <stdlib.h>
#include <unistd.h>

#define STATE "update_simple_state"

static const struct {
	const char *session;
	uint64_t token;
	size_t size;
} files[] = {
	{ "simple-0", 0x1A, 0 },
	{ "simple-0", 0x1B, 1 },
	{ "simple-0", 0x1C, 4095 },
	{ "simple-1", 7, 4096 },
	{ "simple-1", 8, (1 << 20) + 3 },
	{ "simple-1", UINT64_MAX, 17 },
};
static const char *sessions[] = { "simple-0", "simple-1", "simple-empty" };
#define NFILES (sizeof(files) / sizeof(files[0]))
#define NSESSIONS (sizeof(sessions) / sizeof(sessions[0]))

static void stage_1(int dev)
{
	int fds[NSESSIONS + 1];

	for (size_t i = 0; i < NSESSIONS; i++)
		fds[i] = EXPECT_OK(luo_create_session(dev, sessions[i]), "create %s", sessions[i]);
	for (size_t i = 0; i < NFILES; i++) {
		int s = -1, m = luo_memfd("data", files[i].token, files[i].size);

		for (size_t j = 0; j < NSESSIONS; j++)
			if (strcmp(sessions[j], files[i].session) == 0)
				s = fds[j];
		if (m < 0)
			FAIL("memfd: %s", strerror(errno));
		EXPECT_OK(luo_preserve_fd(s, m, files[i].token), "preserve %zu bytes as %#llx in %s",
			  files[i].size, (unsigned long long)files[i].token, files[i].session);
		close(m);
	}
	luo_save_next_stage(dev, STATE, 2, &fds[NSESSIONS]);
	luo_ok("state session saved: next stage 2");
	close(dev);
	luo_daemonize_holder(fds, NSESSIONS + 1);
	luo_passed();
}

static void stage_2(int dev, int state)
{
	int fds[NSESSIONS];
	char why[128];

	for (size_t i = 0; i < NSESSIONS; i++)
		fds[i] = EXPECT_OK(luo_retrieve_session(dev, sessions[i]), "retrieve %s", sessions[i]);
	for (size_t i = 0; i < NFILES; i++) {
		int s = -1, m;

		for (size_t j = 0; j < NSESSIONS; j++)
			if (strcmp(sessions[j], files[i].session) == 0)
				s = fds[j];
		m = EXPECT_OK(luo_retrieve_fd(s, files[i].token), "retrieve %#llx from %s",
			      (unsigned long long)files[i].token, files[i].session);
		if (luo_verify(m, files[i].token, files[i].size, why, sizeof(why)) < 0)
			FAIL("%s/%#llx: %s", files[i].session, (unsigned long long)files[i].token, why);
		luo_ok("%zu bytes verified through mmap and read", files[i].size);
		close(m);
	}
	for (size_t i = 0; i < NSESSIONS; i++) {
		EXPECT_OK(luo_finish(fds[i]), "finish %s", sessions[i]);
		close(fds[i]);
	}
	luo_stage_2_done(dev, state);
}

int main(int argc, char **argv)
{
	luo_two_stage_main(argc, argv, STATE, stage_1, stage_2);
}
