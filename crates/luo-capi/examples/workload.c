/*
 * workload.c: a workload that survives its own replacement through luod, in C.
 *
 *   cc -o workload workload.c $(pkg-config --cflags --libs luo)
 *   ./workload v1 NAME     keep 4 MiB of state in a memfd, preserve it, hand off, exit
 *   ./workload v2 NAME     a new process: retrieve the same memory, check every byte, finish
 *
 * Version 1 fills a memfd with a known pattern and a small header (a magic word, the
 * generation, the writer's pid), preserves it in session NAME under token 1 and hands the
 * session off. Version 2 retrieves it, checks the header and every byte of the pattern, and
 * finishes the session. luod's socket is $LUOD_SOCKET, or the default one.
 *
 * Exit status: 0 done, 1 a luo call failed (its errno and message are printed), 2 the state
 * came back wrong, 3 usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <luo.h>

#define STATE_TOKEN 1
#define STATE_SIZE (4u << 20)
#define MAGIC 0x6c756f2d73746174ull /* "luo-stat" */

struct state_header {
    uint64_t magic;
    uint64_t generation;
    uint64_t writer_pid;
};

/* The byte at offset i of the state, past the header. */
static unsigned char pattern(size_t i)
{
    return (unsigned char)(((i * 2654435761u) >> 11) ^ i);
}

/* Prints a failed luo call and exits 1. */
static void fail(const char *what, int rc)
{
    fprintf(stderr, "workload: %s failed: %s (%s)\n", what, strerror(-rc), luo_last_error());
    exit(1);
}

static int print_session(const struct luo_session_info *info, void *arg)
{
    (void)arg;
    printf("  session %s: %s, %" PRIu64 " file(s), %" PRIu64 " bytes\n", info->name,
           (info->flags & LUO_SESSION_INCOMING) ? "incoming" : "outgoing", info->files,
           info->bytes);
    return 0;
}

static int v1(struct luo_client *client, const char *name)
{
    int fd = memfd_create("workload-state", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, STATE_SIZE) != 0) {
        perror("workload: memfd");
        return 1;
    }
    unsigned char *mem = mmap(NULL, STATE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mem == MAP_FAILED) {
        perror("workload: mmap");
        return 1;
    }
    struct state_header hdr = { MAGIC, 1, (uint64_t)getpid() };
    memcpy(mem, &hdr, sizeof hdr);
    for (size_t i = sizeof hdr; i < STATE_SIZE; i++)
        mem[i] = pattern(i);
    munmap(mem, STATE_SIZE);

    struct luo_session *session;
    int rc = luo_session_create(client, name, &session);
    if (rc < 0)
        fail("luo_session_create", rc);
    rc = luo_preserve(session, fd, STATE_TOKEN);
    if (rc < 0)
        fail("luo_preserve", rc);
    close(fd); /* luod holds the memory now */
    rc = luo_handoff(session);
    if (rc < 0)
        fail("luo_handoff", rc);
    luo_session_close(session); /* handed off: the session waits in luod */
    printf("v1 (pid %d): %u bytes preserved in session %s and handed off\n", (int)getpid(),
           STATE_SIZE, name);

    int n = luo_list(client, print_session, NULL);
    if (n < 0)
        fail("luo_list", n);
    return 0;
}

static int v2(struct luo_client *client, const char *name)
{
    struct luo_session *session;
    int rc = luo_session_retrieve(client, name, &session);
    if (rc < 0)
        fail("luo_session_retrieve", rc);
    int fd;
    rc = luo_retrieve(session, STATE_TOKEN, &fd);
    if (rc < 0)
        fail("luo_retrieve", rc);

    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size != STATE_SIZE) {
        fprintf(stderr, "workload: the state is %lld bytes, not %u\n", (long long)st.st_size,
                STATE_SIZE);
        return 2;
    }
    const unsigned char *mem = mmap(NULL, STATE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
    if (mem == MAP_FAILED) {
        perror("workload: mmap");
        return 1;
    }
    struct state_header hdr;
    memcpy(&hdr, mem, sizeof hdr);
    if (hdr.magic != MAGIC || hdr.generation != 1) {
        fprintf(stderr, "workload: bad header: magic %#" PRIx64 ", generation %" PRIu64 "\n",
                hdr.magic, hdr.generation);
        return 2;
    }
    size_t wrong = 0;
    for (size_t i = sizeof hdr; i < STATE_SIZE; i++)
        if (mem[i] != pattern(i))
            wrong++;
    munmap((void *)mem, STATE_SIZE);
    close(fd);
    if (wrong != 0) {
        fprintf(stderr, "workload: %zu of %u bytes came back wrong\n", wrong, STATE_SIZE);
        return 2;
    }

    rc = luo_session_finish(session);
    if (rc < 0)
        fail("luo_session_finish", rc);
    luo_session_close(session);
    printf("v2 (pid %d): all %u bytes intact (written by pid %" PRIu64 "), session %s "
           "finished\n",
           (int)getpid(), STATE_SIZE, hdr.writer_pid, name);

    struct luo_status status = { .size = sizeof status };
    rc = luo_status(client, &status);
    if (rc < 0)
        fail("luo_status", rc);
    printf("  luod %s (pid %u): generation %" PRIu64 ", %" PRIu64 " outgoing and %" PRIu64
           " incoming session(s)\n",
           status.version, status.pid, status.generation, status.sessions_outgoing,
           status.sessions_incoming);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "v1") != 0 && strcmp(argv[1], "v2") != 0)) {
        fprintf(stderr, "usage: workload v1|v2 NAME\n");
        return 3;
    }
    struct luo_client *client;
    int rc = luo_connect(NULL, &client);
    if (rc < 0)
        fail("luo_connect", rc);
    int code = strcmp(argv[1], "v1") == 0 ? v1(client, argv[2]) : v2(client, argv[2]);
    luo_close(client);
    return code;
}
