// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * PRESERVE_FD + RETRIEVE_FD pairs through /dev/liveupdate, timed by the program itself: the
 * preload library's half of `luo-bench preload`.
 *
 *   luo_bench INCOMING BATCHES PER_BATCH
 *
 * INCOMING names an incoming session holding a file under token 1 (the driver hands it
 * off). Each batch creates an outgoing session and PER_BATCH memfds (untimed), then times
 * PER_BATCH pairs: PRESERVE_FD of the next memfd, RETRIEVE_FD of token 1 (and its close).
 * Prints "pairs=N seconds=S"; exits non-zero if any call fails.
 */
#define _GNU_SOURCE
#include "luo_test.h"

#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	int dev, in, batches, per_batch, *memfds;
	double timed = 0;
	long pairs = 0;

	if (argc != 4) {
		fprintf(stderr, "usage: %s INCOMING BATCHES PER_BATCH\n", argv[0]);
		return 2;
	}
	batches = atoi(argv[2]);
	per_batch = atoi(argv[3]);
	memfds = calloc((size_t)per_batch, sizeof(int));
	dev = luo_open_device();
	if (dev < 0) {
		fprintf(stderr, "open %s: %s\n", LUO_DEVICE, strerror(errno));
		return 1;
	}
	in = luo_retrieve_session(dev, argv[1]);
	if (in < 0) {
		fprintf(stderr, "retrieve %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	for (int b = 0; b < batches; b++) {
		char name[32];
		int out;
		double start;

		snprintf(name, sizeof(name), "bench-out-%d", b);
		out = luo_create_session(dev, name);
		if (out < 0) {
			fprintf(stderr, "create %s: %s\n", name, strerror(errno));
			return 1;
		}
		for (int i = 0; i < per_batch; i++)
			memfds[i] = memfd_create("bench", MFD_CLOEXEC);
		start = now();
		for (int i = 0; i < per_batch; i++) {
			int fd;

			if (luo_preserve_fd(out, memfds[i], (uint64_t)i) < 0) {
				fprintf(stderr, "preserve: %s\n", strerror(errno));
				return 1;
			}
			fd = luo_retrieve_fd(in, 1);
			if (fd < 0) {
				fprintf(stderr, "retrieve: %s\n", strerror(errno));
				return 1;
			}
			close(fd);
		}
		timed += now() - start;
		pairs += per_batch;
		for (int i = 0; i < per_batch; i++)
			close(memfds[i]);
		close(out);
	}
	printf("pairs=%ld seconds=%.6f\n", pairs, timed);
	return 0;
}
