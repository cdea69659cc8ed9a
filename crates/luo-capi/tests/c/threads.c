/*
 * threads.c: one client and one session shared by many threads. 8 threads preserve 40
 * memfds each through the same outgoing session while others ask for status and the list
 * through the same client; after the handoff, 8 threads retrieve all 320 files through the
 * same incoming session and check each one's content. Calls on one handle are serialized
 * by the library, so no thread gets another's reply.
 *
 *   ./threads          (luod at $LUOD_SOCKET; prints TEST PASSED)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <luo.h>

#define THREADS 8
#define PER_THREAD 40

static struct luo_client *client;
static struct luo_session *session;

struct job {
    int index;
    int errors;
    char why[256];
};

static void failed(struct job *job, const char *what, int rc)
{
    if (job->errors++ == 0)
        snprintf(job->why, sizeof job->why, "%s: %d (%s)", what, rc, luo_last_error());
}

static uint64_t token_of(int thread, int i)
{
    return 1000u * (uint64_t)(thread + 1) + (uint64_t)i;
}

static void *preserver(void *arg)
{
    struct job *job = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        uint64_t token = token_of(job->index, i);
        int fd = memfd_create("threads", MFD_CLOEXEC);
        if (fd < 0 || write(fd, &token, sizeof token) != sizeof token) {
            failed(job, "memfd", -errno);
            return NULL;
        }
        int rc = luo_preserve(session, fd, token);
        if (rc < 0)
            failed(job, "luo_preserve", rc);
        close(fd);
        struct luo_status st = { .size = sizeof st };
        rc = luo_status(client, &st);
        if (rc < 0 || st.pid == 0)
            failed(job, "luo_status", rc);
        if (i % 10 == 0 && (rc = luo_list(client, NULL, NULL)) < 0)
            failed(job, "luo_list", rc);
    }
    return NULL;
}

static void *retriever(void *arg)
{
    struct job *job = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        uint64_t token = token_of(job->index, i);
        int fd = -1;
        int rc = luo_retrieve(session, token, &fd);
        if (rc < 0) {
            failed(job, "luo_retrieve", rc);
            continue;
        }
        uint64_t got = 0;
        if (pread(fd, &got, sizeof got, 0) != sizeof got || got != token) {
            char what[64];
            snprintf(what, sizeof what, "token %" PRIu64 " holds %" PRIu64, token, got);
            failed(job, what, 0);
        }
        close(fd);
    }
    return NULL;
}

static int run(void *(*body)(void *), const char *what)
{
    pthread_t t[THREADS];
    struct job jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (struct job){ .index = i };
        pthread_create(&t[i], NULL, body, &jobs[i]);
    }
    int errors = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        if (jobs[i].errors != 0)
            printf("FAIL - %s thread %d: %d error(s), first %s\n", what, i, jobs[i].errors,
                   jobs[i].why);
        errors += jobs[i].errors;
    }
    if (errors == 0)
        printf("ok - %d threads %s %d files\n", THREADS, what, THREADS * PER_THREAD);
    return errors;
}

int main(void)
{
    int rc = luo_connect(NULL, &client);
    if (rc < 0 || (rc = luo_session_create(client, "threads", &session)) < 0) {
        printf("FAIL - set up: %d (%s)\n", rc, luo_last_error());
        return 1;
    }
    int errors = run(preserver, "preserved");
    if ((rc = luo_handoff(session)) < 0) {
        printf("FAIL - luo_handoff: %d (%s)\n", rc, luo_last_error());
        return 1;
    }
    luo_session_close(session);
    if ((rc = luo_session_retrieve(client, "threads", &session)) < 0) {
        printf("FAIL - luo_session_retrieve: %d (%s)\n", rc, luo_last_error());
        return 1;
    }
    errors += run(retriever, "retrieved");
    if ((rc = luo_session_finish(session)) < 0) {
        printf("FAIL - luo_session_finish: %d (%s)\n", rc, luo_last_error());
        return 1;
    }
    luo_session_close(session);
    luo_close(client);
    if (errors != 0)
        return 1;
    printf("TEST PASSED\n");
    return 0;
}
