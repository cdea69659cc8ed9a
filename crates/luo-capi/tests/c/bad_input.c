/*
 * bad_input.c: libluo against bad input. Every mistake is a negative errno with a message,
 * NULL is -EINVAL, *out stays NULL, and nothing is lost: the session and file a failed call
 * touched still work afterwards.
 *
 *   ./bad_input          (luod at $LUOD_SOCKET; prints "ok" lines, then TEST PASSED)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <luo.h>

static int failures;

/* Checks that `rc` is `want` and, for an error, that the message contains `needle`. */
static void expect(int line, const char *what, int rc, int want, const char *needle)
{
    const char *msg = luo_last_error();
    int ok = rc == want;
    if (ok && want < 0)
        ok = msg != NULL && *msg != '\0' && (needle == NULL || strstr(msg, needle) != NULL);
    if (ok) {
        printf("ok - %s: %d%s%s\n", what, rc, want < 0 ? ": " : "", want < 0 ? msg : "");
    } else {
        printf("FAIL line %d - %s: got %d (%s), want %d with \"%s\"\n", line, what, rc,
               msg ? msg : "(null)", want, needle ? needle : "");
        failures++;
    }
}
#define EXPECT(what, rc, want, needle) expect(__LINE__, what, rc, want, needle)

static void check(int line, const char *what, int cond)
{
    printf("%s - %s\n", cond ? "ok" : "FAIL", what);
    if (!cond) {
        printf("  at line %d\n", line);
        failures++;
    }
}
#define CHECK(what, cond) check(__LINE__, what, cond)

static int memfd_with(const char *text)
{
    int fd = memfd_create("bad-input", MFD_CLOEXEC);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        perror("memfd");
        exit(1);
    }
    return fd;
}

static void *other_thread(void *arg)
{
    *(int *)arg = strcmp(luo_last_error(), "") == 0;
    return NULL;
}

static int stop_after_one(const struct luo_session_info *info, void *arg)
{
    (void)info;
    ++*(int *)arg;
    return 1;
}

static int find_dup(const struct luo_session_info *info, void *arg)
{
    if (strcmp(info->name, "bad-input-dup") == 0)
        ++*(int *)arg;
    return 0;
}

int main(void)
{
    CHECK("no error yet: luo_last_error() is \"\"", strcmp(luo_last_error(), "") == 0);

    struct luo_client *client = (struct luo_client *)&failures; /* not NULL: must be reset */
    EXPECT("luo_connect to a missing socket", luo_connect("/nonexistent/luod.sock", &client),
           -ENOENT, "ENOENT");
    CHECK("failed luo_connect leaves *out NULL", client == NULL);
    EXPECT("luo_connect with out NULL", luo_connect(NULL, NULL), -EINVAL, "out is NULL");
    EXPECT("luo_connect", luo_connect(NULL, &client), 0, NULL);
    if (client == NULL)
        return 1;

    /* NULL handles and arguments: -EINVAL, nothing sent. */
    struct luo_session *session = (struct luo_session *)&failures;
    int fd = -7;
    struct luo_status status = { .size = sizeof status };
    EXPECT("luo_session_create(NULL client)", luo_session_create(NULL, "x", &session), -EINVAL,
           "client is NULL");
    CHECK("failed luo_session_create leaves *out NULL", session == NULL);
    EXPECT("luo_session_create(NULL name)", luo_session_create(client, NULL, &session), -EINVAL,
           "name is NULL");
    EXPECT("luo_session_create(NULL out)", luo_session_create(client, "x", NULL), -EINVAL,
           "out is NULL");
    EXPECT("luo_session_retrieve(NULL client)", luo_session_retrieve(NULL, "x", &session),
           -EINVAL, "client is NULL");
    EXPECT("luo_preserve(NULL)", luo_preserve(NULL, 0, 1), -EINVAL, "session is NULL");
    EXPECT("luo_retrieve(NULL)", luo_retrieve(NULL, 1, &fd), -EINVAL, "session is NULL");
    EXPECT("luo_session_finish(NULL)", luo_session_finish(NULL), -EINVAL, "session is NULL");
    EXPECT("luo_handoff(NULL)", luo_handoff(NULL), -EINVAL, "session is NULL");
    EXPECT("luo_session_fd(NULL)", luo_session_fd(NULL), -EINVAL, "session is NULL");
    EXPECT("luo_status(NULL client)", luo_status(NULL, &status), -EINVAL, "client is NULL");
    EXPECT("luo_status(NULL status)", luo_status(client, NULL), -EINVAL, "status is NULL");
    EXPECT("luo_list(NULL)", luo_list(NULL, NULL, NULL), -EINVAL, "client is NULL");
    luo_close(NULL);
    luo_session_close(NULL);
    CHECK("luo_close(NULL) and luo_session_close(NULL) do nothing", 1);

    /* Bad values. */
    char long_name[LUO_SESSION_NAME_MAX + 2];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    EXPECT("a 64-byte session name", luo_session_create(client, long_name, &session), -EINVAL,
           "limit is 63");
    EXPECT("a session name not in UTF-8", luo_session_create(client, "bad\xff", &session),
           -EINVAL, "UTF-8");
    struct luo_status tiny = { .size = 4 };
    EXPECT("struct luo_status with size 4", luo_status(client, &tiny), -EINVAL, "sizeof");
    EXPECT("luo_session_from_fd(-1)", luo_session_from_fd(-1, &session), -EBADF, "-1");
    EXPECT("luo_session_from_fd(closed)", luo_session_from_fd(999, &session), -EBADF, "999");

    /* An outgoing session and what it refuses. */
    EXPECT("luo_session_create", luo_session_create(client, "bad-input", &session), 0, NULL);
    int state = memfd_with("the state that must survive");
    int other = memfd_with("another file");
    EXPECT("luo_preserve token 1", luo_preserve(session, state, 1), 0, NULL);
    EXPECT("luo_preserve of a token taken", luo_preserve(session, other, 1), -EEXIST, "token 1");
    EXPECT("luo_preserve of a file preserved already", luo_preserve(session, state, 2), -EBUSY,
           "token 2");
    EXPECT("luo_preserve of fd -1", luo_preserve(session, -1, 3), -EBADF, "-1");
    EXPECT("luo_preserve of a closed fd", luo_preserve(session, 999, 3), -EBADF, "EBADF");
    EXPECT("luo_retrieve on an outgoing session", luo_retrieve(session, 1, &fd), -EINVAL,
           "RETRIEVE_FD");
    CHECK("failed luo_retrieve leaves *fd_out alone", fd == -7);
    EXPECT("luo_session_finish on an outgoing session", luo_session_finish(session), -EINVAL,
           "FINISH");
    struct luo_session *twin = NULL;
    EXPECT("luo_session_create of a name taken", luo_session_create(client, "bad-input", &twin),
           -EEXIST, "bad-input");
    struct luo_client *second = NULL;
    EXPECT("a second client", luo_connect(NULL, &second), 0, NULL);
    EXPECT("...while the first holds the device", luo_session_create(second, "y", &twin), -EBUSY,
           "EBUSY");
    struct luo_status st2 = { .size = sizeof st2 };
    EXPECT("...still answers luo_status", luo_status(second, &st2), 0, NULL);
    luo_close(second);
    EXPECT("luo_handoff", luo_handoff(session), 0, NULL);
    EXPECT("luo_handoff again (the handle is inert)", luo_handoff(session), -EINVAL, "handoff");
    EXPECT("luo_preserve after handoff", luo_preserve(session, other, 5), -EINVAL, "token 5");
    luo_session_close(session);
    close(state);

    /* The incoming session: an unknown token, then everything still there. */
    EXPECT("luo_session_retrieve of a name never used",
           luo_session_retrieve(client, "never-created", &session), -ENOENT, "never-created");
    EXPECT("luo_session_retrieve", luo_session_retrieve(client, "bad-input", &session), 0, NULL);
    EXPECT("luo_session_retrieve again", luo_session_retrieve(client, "bad-input", &twin),
           -EINVAL, "RETRIEVE_SESSION");
    EXPECT("luo_retrieve of an unknown token", luo_retrieve(session, 99, &fd), -ENOENT,
           "token 99");
    CHECK("the message names the operation and the errno",
          strstr(luo_last_error(), "luo_retrieve: token 99: RETRIEVE_FD failed: ENOENT") != NULL);
    CHECK("failed luo_retrieve leaves *fd_out alone", fd == -7);
    EXPECT("luo_retrieve with fd_out NULL", luo_retrieve(session, 1, NULL), -EINVAL,
           "fd_out is NULL");
    EXPECT("luo_preserve on an incoming session", luo_preserve(session, other, 6), -EINVAL,
           "PRESERVE_FD");
    EXPECT("luo_handoff of an incoming session", luo_handoff(session), -EINVAL, "handoff");
    EXPECT("luo_retrieve token 1 after the errors", luo_retrieve(session, 1, &fd), 0, NULL);
    char buf[64] = { 0 };
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    CHECK("token 1 holds what was preserved",
          n > 0 && strcmp(buf, "the state that must survive") == 0);
    close(fd);
    EXPECT("luo_session_finish", luo_session_finish(session), 0, NULL);
    luo_session_close(session);

    /* The last error is per thread. */
    int clean = 0;
    pthread_t t;
    pthread_create(&t, NULL, other_thread, &clean);
    pthread_join(t, NULL);
    CHECK("another thread's luo_last_error() is \"\"", clean);

    /* luo_status: an older caller's shorter struct, a newer caller's longer one. */
    EXPECT("luo_status", luo_status(client, &status), 0, NULL);
    CHECK("luo_status fills sizeof(struct luo_status)", status.size == sizeof status);
    CHECK("luo_status: luod's pid and version", status.pid > 0 && status.version[0] != '\0');
    uint64_t older[2] = { 0, 0 };
    struct luo_status *old_st = (struct luo_status *)(void *)older;
    old_st->size = sizeof older;
    EXPECT("luo_status with a 16-byte struct", luo_status(client, old_st), 0, NULL);
    CHECK("...fills 16 bytes", old_st->size == sizeof older);
    union {
        struct luo_status st;
        unsigned char bytes[sizeof(struct luo_status) + 64];
    } newer;
    memset(&newer, 0xff, sizeof newer);
    newer.st.size = sizeof newer;
    EXPECT("luo_status with a longer struct", luo_status(client, &newer.st), 0, NULL);
    int zero_tail = newer.st.size == sizeof(struct luo_status);
    for (size_t i = sizeof(struct luo_status); i < sizeof newer; i++)
        zero_tail = zero_tail && newer.bytes[i] == 0;
    CHECK("...fills what it knows and zeroes the rest", zero_tail);

    /* A session adopted from a duplicate of its descriptor lives while either is open. */
    EXPECT("luo_session_create", luo_session_create(client, "bad-input-dup", &session), 0, NULL);
    int sfd = luo_session_fd(session);
    CHECK("luo_session_fd", sfd >= 0);
    struct luo_session *adopted = NULL;
    EXPECT("luo_session_from_fd(dup)", luo_session_from_fd(dup(sfd), &adopted), 0, NULL);
    luo_session_close(session);
    int other2 = memfd_with("through the adopted handle");
    EXPECT("luo_preserve through the adopted handle", luo_preserve(adopted, other2, 1), 0, NULL);
    int found = 0;
    EXPECT("luo_list", luo_list(client, find_dup, &found) >= 1, 1, NULL);
    CHECK("the session lives on in the adopted handle", found == 1);
    luo_session_close(adopted);
    close(other2);
    close(other);

    /* luo_list counts, and stops when told. */
    int count = luo_list(client, NULL, NULL);
    CHECK("luo_list(NULL callback) counts", count >= 0);
    int calls = 0;
    int seen = luo_list(client, stop_after_one, &calls);
    /* The sessions closed just above leave luod when it has read their hang-up, which may be
       between the two calls: what is checked is that the walk stops at the first one. */
    CHECK("luo_list stops when the callback returns non-zero",
          calls <= 1 && seen == calls && (count > 0 || calls == 0));

    luo_close(client);
    if (failures != 0) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("TEST PASSED\n");
    return 0;
}
