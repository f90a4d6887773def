/*
 * Tests of the C API as a C program uses it, run under AddressSanitizer, UndefinedBehaviorSanitizer
 * and LeakSanitizer by scripts/test-c.sh.
 *
 *   c_api_test CEPH_CONF   every test, against the cluster of CEPH_CONF
 *   c_api_test --offline   only those that need no cluster
 *
 * The live tests make their own images (rbd CLI) named after the process id, and remove them.
 * Closes with "N passed, M failed"; exits nonzero if any failed.
 */
#define _POSIX_C_SOURCE 200809L
#include <rbd_diffsync.h>

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *conf;
static char src[64];
static const char *current;
static int passed, failed, test_ok;

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: in %s: CHECK(%s) failed\n", __FILE__, __LINE__, current,  \
                    #cond);                                                                    \
            test_ok = 0;                                                                       \
        }                                                                                      \
    } while (0)

#define CHECK_INT(actual, expected)                                                            \
    do {                                                                                       \
        long long a_ = (actual), e_ = (expected);                                              \
        if (a_ != e_) {                                                                        \
            fprintf(stderr, "%s:%d: in %s: %s is %lld, expected %lld\n", __FILE__, __LINE__,  \
                    current, #actual, a_, e_);                                                 \
            test_ok = 0;                                                                       \
        }                                                                                      \
    } while (0)

#define CHECK_STR(actual, expected)                                                            \
    do {                                                                                       \
        const char *a_ = (actual), *e_ = (expected);                                           \
        if (!a_ || strcmp(a_, e_) != 0) {                                                      \
            fprintf(stderr, "%s:%d: in %s: %s is \"%s\", expected \"%s\"\n", __FILE__,        \
                    __LINE__, current, #actual, a_ ? a_ : "(null)", e_);                      \
            test_ok = 0;                                                                       \
        }                                                                                      \
    } while (0)

#define CHECK_CONTAINS(actual, part)                                                           \
    do {                                                                                       \
        const char *a_ = (actual);                                                             \
        if (!a_ || !strstr(a_, (part))) {                                                      \
            fprintf(stderr, "%s:%d: in %s: %s is \"%s\", which lacks \"%s\"\n", __FILE__,     \
                    __LINE__, current, #actual, a_ ? a_ : "(null)", (part));                  \
            test_ok = 0;                                                                       \
        }                                                                                      \
    } while (0)

static void run_test(const char *name, void (*test)(void))
{
    current = name;
    test_ok = 1;
    test();
    if (test_ok)
        passed++;
    else
        failed++;
    printf("%s %s\n", test_ok ? "ok  " : "FAIL", name);
    fflush(stdout);
}

/* Runs an rbd CLI command against the test cluster; returns its exit status. */
static int rbd(const char *fmt, ...)
{
    char args[512], cmd[1024];
    va_list ap;
    int status;

    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "rbd -c '%s' %s", conf, args);
    status = system(cmd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The first line an rbd CLI pipeline prints (trailing newline removed), in a static buffer. */
static const char *rbd_out(const char *fmt, ...)
{
    static char out[256];
    char args[512], cmd[1024];
    va_list ap;
    FILE *f;

    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "rbd -c '%s' %s", conf, args);
    out[0] = '\0';
    if ((f = popen(cmd, "r")) != NULL) {
        if (!fgets(out, sizeof out, f))
            out[0] = '\0';
        pclose(f);
    }
    out[strcspn(out, "\n")] = '\0';
    return out;
}

static char *md5(const char *image_at_snap)
{
    return strdup(rbd_out("export %s - 2>/dev/null | md5sum | cut -d' ' -f1", image_at_snap));
}

/* Whether `image@snap` reads as `src@snap`, by md5 of `rbd export`. */
static int same_content(const char *image, const char *snap)
{
    char a[128], b[128];
    char *x, *y;
    int same;

    snprintf(a, sizeof a, "%s@%s", src, snap);
    snprintf(b, sizeof b, "%s@%s", image, snap);
    x = md5(a);
    y = md5(b);
    same = strlen(x) == 32 && strcmp(x, y) == 0;
    if (!same)
        fprintf(stderr, "md5 of %s is %s, of %s %s\n", a, x, b, y);
    free(x);
    free(y);
    return same;
}

/* The destination's snapshot names, space-separated. */
static const char *snaps(const char *image)
{
    return rbd_out("snap ls %s 2>/dev/null | awk 'NR > 1 { printf \"%%s \", $2 }'", image);
}

/* A transfer of `source` into `dest` on the test cluster (`dest` may be NULL). */
static rbd_diffsync_transfer *transfer_of(const char *source, const char *dest)
{
    rbd_diffsync_cluster *cluster = NULL;
    rbd_diffsync_transfer *t = NULL;

    CHECK_INT(rbd_diffsync_cluster_new(&cluster), 0);
    CHECK_INT(rbd_diffsync_cluster_set_conf(cluster, conf ? conf : "/nonexistent/ceph.conf"), 0);
    CHECK_INT(rbd_diffsync_transfer_new(&t), 0);
    CHECK_INT(rbd_diffsync_transfer_set_cluster(t, cluster), 0);
    rbd_diffsync_cluster_free(cluster); /* the transfer keeps a copy */
    CHECK_INT(rbd_diffsync_transfer_set_source(t, source), 0);
    if (dest)
        CHECK_INT(rbd_diffsync_transfer_set_dest(t, dest), 0);
    return t;
}

static void dest_name(char *buf, size_t size, const char *what)
{
    snprintf(buf, size, "backups/%s-%s", src + strlen("rbd/"), what);
}

/* ---- no cluster needed ---- */

static void test_version(void)
{
    CHECK_INT(rbd_diffsync_abi_version(), RBD_DIFFSYNC_ABI_VERSION);
    CHECK(rbd_diffsync_version() != NULL && strchr(rbd_diffsync_version(), '.') != NULL);
}

static void test_free_null(void)
{
    rbd_diffsync_cluster_free(NULL);
    rbd_diffsync_transfer_free(NULL);
}

static void test_null_arguments(void)
{
    rbd_diffsync_cluster *c = NULL;
    rbd_diffsync_transfer *t = NULL;
    rbd_diffsync_stats stats = {.struct_size = sizeof stats};
    rbd_diffsync_plan plan = {.struct_size = sizeof plan};
    rbd_diffsync_verify_stats vstats = {.struct_size = sizeof vstats};
    rbd_diffsync_verify *v = NULL;
    uint64_t offset = 7;

    /* NULL out-pointers and handles */
    CHECK_INT(rbd_diffsync_cluster_new(NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_new(NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_cluster_set_conf(NULL, "x"), -EINVAL);
    CHECK_INT(rbd_diffsync_cluster_set_id(NULL, "x"), -EINVAL);
    CHECK_INT(rbd_diffsync_cluster_set_name(NULL, "x"), -EINVAL);
    CHECK_INT(rbd_diffsync_cluster_set_cluster_name(NULL, "x"), -EINVAL);
    CHECK_INT(rbd_diffsync_cluster_set_keyring(NULL, "x"), -EINVAL);
    CHECK_INT(rbd_diffsync_cluster_set_mon_host(NULL, "x"), -EINVAL);
    CHECK_INT(rbd_diffsync_cluster_set_connect_timeout_ms(NULL, 1), -EINVAL);
    CHECK_INT(rbd_diffsync_cluster_set_op_timeout_ms(NULL, 1), -EINVAL);
    CHECK_INT(rbd_diffsync_cluster_set_option(NULL, "k", "v"), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_set_source(NULL, "rbd/a@s"), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_set_dest(NULL, "rbd/b"), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_set_from_snap(NULL, "s"), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_set_cluster(NULL, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_set_dest_cluster(NULL, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_set_window(NULL, 4), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_set_chunk_size(NULL, 4096), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_set_whole_object(NULL, true), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_set_force(NULL, true), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_set_verify(NULL, true), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_set_progress(NULL, NULL, NULL, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_set_progress_interval_ms(NULL, 10), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_plan(NULL, &plan), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_run(NULL, &stats), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_cancel(NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_last_error_offset(NULL, &offset), -EINVAL);
    CHECK_INT(rbd_diffsync_verify_new(NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_verify_set_source(NULL, "rbd/a@s"), -EINVAL);
    CHECK_INT(rbd_diffsync_verify_set_dest(NULL, "rbd/b@s"), -EINVAL);
    CHECK_INT(rbd_diffsync_verify_set_cluster(NULL, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_verify_set_dest_cluster(NULL, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_verify_set_window(NULL, 4), -EINVAL);
    CHECK_INT(rbd_diffsync_verify_set_chunk_size(NULL, 4096), -EINVAL);
    CHECK_INT(rbd_diffsync_verify_set_progress(NULL, NULL, NULL, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_verify_set_progress_interval_ms(NULL, 10), -EINVAL);
    CHECK_INT(rbd_diffsync_verify_run(NULL, &vstats), -EINVAL);
    CHECK_INT(rbd_diffsync_verify_cancel(NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_verify_last_error_offset(NULL, &offset), -EINVAL);
    CHECK(rbd_diffsync_cluster_last_error(NULL) != NULL);
    CHECK(rbd_diffsync_transfer_last_error(NULL) != NULL);
    CHECK(rbd_diffsync_verify_last_error(NULL) != NULL);

    /* NULL arguments of live handles: -EINVAL, and a message naming the argument */
    CHECK_INT(rbd_diffsync_cluster_new(&c), 0);
    CHECK_STR(rbd_diffsync_cluster_last_error(c), "");
    CHECK_INT(rbd_diffsync_cluster_set_conf(c, NULL), -EINVAL);
    CHECK_STR(rbd_diffsync_cluster_last_error(c), "path is NULL");
    CHECK_INT(rbd_diffsync_cluster_set_id(c, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_cluster_set_name(c, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_cluster_set_cluster_name(c, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_cluster_set_keyring(c, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_cluster_set_mon_host(c, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_cluster_set_option(c, "k", NULL), -EINVAL);
    CHECK_STR(rbd_diffsync_cluster_last_error(c), "value is NULL");
    CHECK_INT(rbd_diffsync_cluster_set_option(c, "rbd_default_pool", "rbd"), 0);
    CHECK_STR(rbd_diffsync_cluster_last_error(c), "value is NULL"); /* successes keep it */

    CHECK_INT(rbd_diffsync_transfer_new(&t), 0);
    CHECK_INT(rbd_diffsync_transfer_set_source(t, NULL), -EINVAL);
    CHECK_STR(rbd_diffsync_transfer_last_error(t), "spec is NULL");
    CHECK_INT(rbd_diffsync_transfer_set_dest(t, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_transfer_set_cluster(t, NULL), -EINVAL);
    CHECK_STR(rbd_diffsync_transfer_last_error(t), "cluster is NULL");
    /* documented NULLs: a full transfer, the source's cluster, no callback */
    CHECK_INT(rbd_diffsync_transfer_set_from_snap(t, NULL), 0);
    CHECK_INT(rbd_diffsync_transfer_set_dest_cluster(t, NULL), 0);
    CHECK_INT(rbd_diffsync_transfer_set_progress(t, NULL, NULL, NULL), 0);
    CHECK_INT(rbd_diffsync_transfer_set_dest_cluster(t, c), 0);
    CHECK_INT(rbd_diffsync_transfer_cancel(t), 0);
    /* no failure named an offset yet; a NULL out is refused */
    CHECK_INT(rbd_diffsync_transfer_last_error_offset(t, &offset), -ENODATA);
    CHECK_INT(offset, 7);
    CHECK_INT(rbd_diffsync_transfer_last_error_offset(t, NULL), -EINVAL);
    CHECK_STR(rbd_diffsync_transfer_last_error(t), "out is NULL");
    rbd_diffsync_transfer_free(t);

    CHECK_INT(rbd_diffsync_verify_new(&v), 0);
    CHECK_STR(rbd_diffsync_verify_last_error(v), "");
    CHECK_INT(rbd_diffsync_verify_set_source(v, NULL), -EINVAL);
    CHECK_STR(rbd_diffsync_verify_last_error(v), "spec is NULL");
    CHECK_INT(rbd_diffsync_verify_set_dest(v, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_verify_set_cluster(v, NULL), -EINVAL);
    CHECK_STR(rbd_diffsync_verify_last_error(v), "cluster is NULL");
    CHECK_INT(rbd_diffsync_verify_set_dest_cluster(v, NULL), 0);
    CHECK_INT(rbd_diffsync_verify_set_dest_cluster(v, c), 0);
    CHECK_INT(rbd_diffsync_verify_set_progress(v, NULL, NULL, NULL), 0);
    CHECK_INT(rbd_diffsync_verify_last_error_offset(v, &offset), -ENODATA);
    CHECK_INT(rbd_diffsync_verify_cancel(v), 0);
    rbd_diffsync_verify_free(v);
    rbd_diffsync_cluster_free(c);
}

static void test_malformed_specs(void)
{
    static const char *bad[] = {"", "@s", "rbd/", "/img", "rbd/img@", "rbd/a/b/c", "img@s@t",
                                "rbd//img", "a\xff"};
    rbd_diffsync_transfer *t = NULL;
    size_t i;

    CHECK_INT(rbd_diffsync_transfer_new(&t), 0);
    for (i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_INT(rbd_diffsync_transfer_set_source(t, bad[i]), -EINVAL);
        CHECK(strlen(rbd_diffsync_transfer_last_error(t)) > 0);
        CHECK_INT(rbd_diffsync_transfer_set_dest(t, bad[i]), -EINVAL);
    }
    CHECK_INT(rbd_diffsync_transfer_set_source(t, "rbd/img@"), -EINVAL);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "rbd/img@");
    CHECK_INT(rbd_diffsync_transfer_set_source(t, "rbd/ns/img@snap"), 0);
    CHECK_INT(rbd_diffsync_transfer_set_dest(t, "img"), 0);
    rbd_diffsync_transfer_free(t);
}

/* Settings the core refuses, before it connects to anything. */
static void test_settings_checked_by_run(void)
{
    rbd_diffsync_stats stats = {.struct_size = sizeof stats};
    rbd_diffsync_transfer *t = NULL;

    CHECK_INT(rbd_diffsync_transfer_new(&t), 0);
    CHECK_INT(rbd_diffsync_transfer_run(t, &stats), -EINVAL); /* no source nor destination */
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "no source");
    rbd_diffsync_transfer_free(t);

    t = transfer_of("rbd/a@s2", "backups/b");
    CHECK_INT(rbd_diffsync_transfer_set_window(t, 0), 0);
    CHECK_INT(rbd_diffsync_transfer_run(t, &stats), -EINVAL);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "window 0");
    CHECK_INT(rbd_diffsync_transfer_set_window(t, 8), 0);
    CHECK_INT(rbd_diffsync_transfer_set_chunk_size(t, 1000), 0);
    CHECK_INT(rbd_diffsync_transfer_plan(t, NULL), -EINVAL);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "chunk size 1000");
    CHECK_INT(rbd_diffsync_transfer_set_chunk_size(t, 1 << 20), 0);
    CHECK_INT(rbd_diffsync_transfer_set_from_snap(t, "s2"), 0);
    CHECK_INT(rbd_diffsync_transfer_run(t, NULL), -EINVAL);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "nothing to transfer");
    CHECK_INT(rbd_diffsync_transfer_set_from_snap(t, NULL), 0);
    CHECK_INT(rbd_diffsync_transfer_set_dest(t, "rbd/a"), 0);
    CHECK_INT(rbd_diffsync_transfer_run(t, &stats), -EINVAL);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "same image");
    CHECK_INT(rbd_diffsync_transfer_set_dest(t, "backups/b@s9"), 0);
    CHECK_INT(rbd_diffsync_transfer_run(t, &stats), -EINVAL);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "must be an image");

    /* a struct_size smaller than the library's first version of the struct */
    CHECK_INT(rbd_diffsync_transfer_set_dest(t, "backups/b"), 0);
    stats.struct_size = sizeof(size_t);
    CHECK_INT(rbd_diffsync_transfer_run(t, &stats), -EINVAL);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "struct_size");
    rbd_diffsync_transfer_free(t);
}

/* The verify handle's settings, refused before it connects to anything. */
static void test_verify_settings_checked_by_run(void)
{
    rbd_diffsync_verify_stats stats = {.struct_size = sizeof stats};
    rbd_diffsync_verify *v = NULL;

    CHECK_INT(rbd_diffsync_verify_new(&v), 0);
    CHECK_INT(rbd_diffsync_verify_run(v, &stats), -EINVAL); /* no images */
    CHECK_CONTAINS(rbd_diffsync_verify_last_error(v), "no source");
    CHECK_INT(rbd_diffsync_verify_set_source(v, "rbd/img@"), -EINVAL);
    CHECK_CONTAINS(rbd_diffsync_verify_last_error(v), "rbd/img@");
    CHECK_INT(rbd_diffsync_verify_set_source(v, "rbd/a@s1"), 0);
    CHECK_INT(rbd_diffsync_verify_set_dest(v, "backups/b@s1"), 0);
    CHECK_INT(rbd_diffsync_verify_set_window(v, 0), 0);
    CHECK_INT(rbd_diffsync_verify_run(v, &stats), -EINVAL);
    CHECK_CONTAINS(rbd_diffsync_verify_last_error(v), "window 0");
    CHECK_INT(rbd_diffsync_verify_set_window(v, 4), 0);
    CHECK_INT(rbd_diffsync_verify_set_chunk_size(v, 1000), 0);
    CHECK_INT(rbd_diffsync_verify_run(v, NULL), -EINVAL);
    CHECK_CONTAINS(rbd_diffsync_verify_last_error(v), "chunk size 1000");
    CHECK_INT(rbd_diffsync_verify_last_error_offset(v, &(uint64_t){0}), -ENODATA);
    CHECK_INT(rbd_diffsync_verify_set_chunk_size(v, 1 << 20), 0);
    stats.struct_size = sizeof(size_t);
    CHECK_INT(rbd_diffsync_verify_run(v, &stats), -EINVAL);
    CHECK_CONTAINS(rbd_diffsync_verify_last_error(v), "struct_size");
    rbd_diffsync_verify_free(v);
}

static void test_codes_and_messages(void)
{
    /* every kind of error's codes (library.rs' table), named and described */
    static const struct {
        int errno_value;
        const char *name;
    } codes[] = {
        {EINVAL, "EINVAL"},   {ENOENT, "ENOENT"},       {EEXIST, "EEXIST"},
        {EACCES, "EACCES"},   {EPERM, "EPERM"},         {EBUSY, "EBUSY"},
        {ESHUTDOWN, "ESHUTDOWN"}, {ECANCELED, "ECANCELED"}, {ETIMEDOUT, "ETIMEDOUT"},
        {ENOSPC, "ENOSPC"},
        {EDQUOT, "EDQUOT"},   {EOPNOTSUPP, "EOPNOTSUPP"}, {ENOSYS, "ENOSYS"},
        {EIO, "EIO"},         {EXDEV, "EXDEV"},
    };
    static const struct {
        int code;
        const char *name, *message;
    } library[] = {
        {RBD_DIFFSYNC_EDESTCHANGED, "EDESTCHANGED",
         "Destination changed since the base snapshot"},
        {RBD_DIFFSYNC_EMISMATCH, "EMISMATCH", "Images differ"},
    };
    size_t i;

    for (i = 0; i < sizeof codes / sizeof *codes; i++) {
        CHECK_STR(rbd_diffsync_code_name(-codes[i].errno_value), codes[i].name);
        CHECK_STR(rbd_diffsync_strerror(-codes[i].errno_value), strerror(codes[i].errno_value));
    }
    for (i = 0; i < sizeof library / sizeof *library; i++) {
        CHECK(library[i].code >= RBD_DIFFSYNC_LIBRARY_CODE_BASE);
        CHECK_STR(rbd_diffsync_code_name(-library[i].code), library[i].name);
        CHECK_STR(rbd_diffsync_code_name(library[i].code), library[i].name);
        CHECK_STR(rbd_diffsync_strerror(-library[i].code), library[i].message);
    }
    CHECK_INT(RBD_DIFFSYNC_EDESTCHANGED, RBD_DIFFSYNC_LIBRARY_CODE_BASE);
    CHECK_INT(RBD_DIFFSYNC_LIBRARY_CODE_BASE, 4296);
    CHECK_INT(RBD_DIFFSYNC_EMISMATCH, 4297);
    /* a code beyond the errnos that is not the library's */
    CHECK(rbd_diffsync_code_name(-RBD_DIFFSYNC_LIBRARY_CODE_BASE - 1000) == NULL);
    CHECK_STR(rbd_diffsync_strerror(-RBD_DIFFSYNC_LIBRARY_CODE_BASE - 1000),
              "Unknown error code");
    CHECK(rbd_diffsync_code_name(0) == NULL);
    CHECK(rbd_diffsync_strerror(-ENOENT) == rbd_diffsync_strerror(-ENOENT)); /* static */
    CHECK_INT(RBD_DIFFSYNC_DEFAULT_CONNECT_TIMEOUT_MS, 30000);
    CHECK_INT(RBD_DIFFSYNC_DEFAULT_OP_TIMEOUT_MS, 60000);
    CHECK_INT(RBD_DIFFSYNC_PHASE_VERIFYING, 4);
}

static int finalized;

static void count_finalize(void *user_data)
{
    CHECK(user_data == &finalized);
    finalized++;
}

static int never_called(const rbd_diffsync_progress *p, void *user_data)
{
    (void)p;
    (void)user_data;
    return 0;
}

static void test_finalizer_once(void)
{
    rbd_diffsync_transfer *t = NULL;
    rbd_diffsync_verify *v = NULL;

    finalized = 0;
    CHECK_INT(rbd_diffsync_transfer_new(&t), 0);
    CHECK_INT(rbd_diffsync_transfer_set_progress(t, never_called, &finalized, count_finalize), 0);
    CHECK_INT(finalized, 0);
    CHECK_INT(rbd_diffsync_transfer_set_progress(t, never_called, &finalized, count_finalize), 0);
    CHECK_INT(finalized, 1); /* replaced */
    rbd_diffsync_transfer_free(t);
    CHECK_INT(finalized, 2); /* freed */
    /* nor on a failed call */
    CHECK_INT(rbd_diffsync_transfer_set_progress(NULL, never_called, &finalized, count_finalize),
              -EINVAL);
    CHECK_INT(finalized, 2);
    /* a NULL callback's finalizer is not kept */
    CHECK_INT(rbd_diffsync_transfer_new(&t), 0);
    CHECK_INT(rbd_diffsync_transfer_set_progress(t, NULL, &finalized, count_finalize), 0);
    rbd_diffsync_transfer_free(t);
    CHECK_INT(finalized, 2);
    /* the verify handle's likewise */
    CHECK_INT(rbd_diffsync_verify_new(&v), 0);
    CHECK_INT(rbd_diffsync_verify_set_progress(v, never_called, &finalized, count_finalize), 0);
    CHECK_INT(rbd_diffsync_verify_set_progress(v, never_called, &finalized, count_finalize), 0);
    CHECK_INT(finalized, 3);
    rbd_diffsync_verify_free(v);
    CHECK_INT(finalized, 4);
    CHECK_INT(rbd_diffsync_verify_set_progress(NULL, never_called, &finalized, count_finalize),
              -EINVAL);
    CHECK_INT(finalized, 4);
}

/* ---- against the cluster ---- */

static int batch_never_called(const rbd_diffsync_batch_progress *p, void *user_data)
{
    (void)p;
    (void)user_data;
    return 0;
}

/* The batch's NULL checks, index checks and settings checked by its run; no cluster needed. */
static void test_batch_arguments(void)
{
    rbd_diffsync_batch *b = NULL;
    rbd_diffsync_transfer *t = NULL;
    rbd_diffsync_stats stats = {.struct_size = sizeof stats};
    rbd_diffsync_volume_progress vp = {.struct_size = sizeof vp};

    rbd_diffsync_batch_free(NULL);
    CHECK_INT(rbd_diffsync_transfer_set_rate_limit(NULL, 1), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_new(NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_add(NULL, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_set_parallel(NULL, 2), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_set_memory_budget(NULL, 1 << 20), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_set_max_requests(NULL, 8), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_set_rate_limit(NULL, 1), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_set_progress(NULL, NULL, NULL, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_set_progress_interval_ms(NULL, 10), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_run(NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_cancel(NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_volume_count(NULL), 0);
    CHECK_INT(rbd_diffsync_batch_volume_result(NULL, 0), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_volume_stats(NULL, 0, &stats), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_volume_progress(NULL, 0, &vp), -EINVAL);
    CHECK(rbd_diffsync_batch_volume_error_message(NULL, 0) == NULL);
    CHECK(rbd_diffsync_batch_last_error(NULL) != NULL);

    CHECK_INT(rbd_diffsync_batch_new(&b), 0);
    CHECK_STR(rbd_diffsync_batch_last_error(b), "");
    CHECK_INT(rbd_diffsync_batch_run(b), 0); /* empty */
    CHECK_INT(rbd_diffsync_batch_add(b, NULL), -EINVAL);
    CHECK_STR(rbd_diffsync_batch_last_error(b), "transfer is NULL");
    CHECK_INT(rbd_diffsync_transfer_new(&t), 0);
    CHECK_INT(rbd_diffsync_transfer_set_source(t, "rbd/a@s"), 0);
    CHECK_INT(rbd_diffsync_batch_add(b, t), -EINVAL); /* no destination */
    CHECK_CONTAINS(rbd_diffsync_batch_last_error(b), "no source or no destination");
    CHECK_INT(rbd_diffsync_batch_volume_count(b), 0);
    CHECK_INT(rbd_diffsync_transfer_set_dest(t, "backups/a"), 0);
    CHECK_INT(rbd_diffsync_transfer_set_rate_limit(t, 1 << 20), 0);
    CHECK_INT(rbd_diffsync_transfer_set_window(t, 0), 0); /* refused when it runs */
    CHECK_INT(rbd_diffsync_batch_add(b, t), 0);
    CHECK_INT(rbd_diffsync_batch_volume_count(b), 1);
    CHECK_INT(rbd_diffsync_batch_volume_result(b, 0), -ENODATA); /* not run yet */
    CHECK_INT(rbd_diffsync_batch_volume_result(b, 1), -ERANGE);
    CHECK_CONTAINS(rbd_diffsync_batch_last_error(b), "beyond the 1 volumes");
    CHECK_INT(rbd_diffsync_batch_volume_stats(b, 0, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_volume_progress(b, 0, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_volume_progress(b, 0, &vp), 0);
    CHECK_INT(vp.state, RBD_DIFFSYNC_VOLUME_QUEUED);
    CHECK(vp.phase_name == NULL);
    CHECK(rbd_diffsync_batch_volume_error_message(b, 0) == NULL);

    /* settings out of range are refused when set, and change nothing */
    CHECK_INT(rbd_diffsync_batch_set_parallel(b, 0), -EINVAL);
    CHECK_CONTAINS(rbd_diffsync_batch_last_error(b), "parallel 0 is not between 1 and 1024");
    CHECK_INT(rbd_diffsync_batch_set_parallel(b, 1025), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_set_memory_budget(b, 0), -EINVAL);
    CHECK_CONTAINS(rbd_diffsync_batch_last_error(b), "must be above 0");
    CHECK_INT(rbd_diffsync_batch_set_max_requests(b, 0), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_set_parallel(b, 1024), 0);
    CHECK_INT(rbd_diffsync_batch_set_parallel(b, 1), 0);

    /* a volume that fails before connecting (a window out of range) */
    CHECK_INT(rbd_diffsync_batch_run(b), 1);
    CHECK_INT(rbd_diffsync_batch_volume_result(b, 0), -EINVAL);
    CHECK_CONTAINS(rbd_diffsync_batch_volume_error_message(b, 0), "window");
    CHECK_CONTAINS(rbd_diffsync_batch_last_error(b), "1 of 1 volumes failed");
    CHECK_INT(rbd_diffsync_batch_volume_stats(b, 0, &stats), -ENODATA);
    stats.struct_size = 8;
    CHECK_INT(rbd_diffsync_batch_volume_stats(b, 0, &stats), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_volume_progress(b, 0, &vp), 0);
    CHECK_INT(vp.state, RBD_DIFFSYNC_VOLUME_FAILED);

    /* the finalizer: once when replaced, none for NULL, once at free */
    finalized = 0;
    CHECK_INT(rbd_diffsync_batch_set_progress(b, batch_never_called, &finalized, count_finalize),
              0);
    CHECK_INT(rbd_diffsync_batch_set_progress(b, NULL, &finalized, count_finalize), 0);
    CHECK_INT(finalized, 1);
    CHECK_INT(rbd_diffsync_batch_set_progress(b, batch_never_called, &finalized, count_finalize),
              0);
    rbd_diffsync_transfer_free(t); /* the batch keeps its copy */
    CHECK_INT(rbd_diffsync_batch_volume_count(b), 1);
    rbd_diffsync_batch_free(b);
    CHECK_INT(finalized, 2);
}

static void test_missing_conf_image_and_snapshot(void)
{
    rbd_diffsync_cluster *c = NULL;
    rbd_diffsync_transfer *t;
    char dest[128], spec[128];

    dest_name(dest, sizeof dest, "missing");
    t = transfer_of("rbd/no-such-image@s1", dest);
    CHECK_INT(rbd_diffsync_transfer_run(t, NULL), -ENOENT);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "no-such-image");
    snprintf(spec, sizeof spec, "%s@no-such-snap", src);
    CHECK_INT(rbd_diffsync_transfer_set_source(t, spec), 0);
    CHECK_INT(rbd_diffsync_transfer_plan(t, NULL), -ENOENT);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "no-such-snap");
    snprintf(spec, sizeof spec, "%s@s2", src);
    CHECK_INT(rbd_diffsync_transfer_set_source(t, spec), 0);
    CHECK_INT(rbd_diffsync_transfer_set_from_snap(t, "no-such-base"), 0);
    CHECK_INT(rbd_diffsync_transfer_run(t, NULL), -ENOENT);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "no-such-base");
    CHECK_STR(snaps(dest), ""); /* nothing was created */

    CHECK_INT(rbd_diffsync_cluster_new(&c), 0);
    CHECK_INT(rbd_diffsync_cluster_set_conf(c, "/nonexistent/ceph.conf"), 0);
    CHECK_INT(rbd_diffsync_transfer_set_cluster(t, c), 0);
    CHECK_INT(rbd_diffsync_transfer_run(t, NULL), -ENOENT);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "/nonexistent/ceph.conf");
    rbd_diffsync_cluster_free(c);
    rbd_diffsync_transfer_free(t);
}

static void test_plan_writes_nothing(void)
{
    rbd_diffsync_plan plan = {.struct_size = sizeof plan};
    struct {
        rbd_diffsync_plan plan;
        char later_fields[32];
    } newer;
    rbd_diffsync_transfer *t;
    char dest[128], source[128];

    dest_name(dest, sizeof dest, "plan");
    snprintf(source, sizeof source, "%s@s1", src);
    t = transfer_of(source, dest);
    CHECK_INT(rbd_diffsync_transfer_plan(t, &plan), 0);
    CHECK_INT(plan.struct_size, sizeof plan);
    CHECK_STR(plan.source, source);
    CHECK_STR(plan.dest, dest);
    CHECK(plan.from_snap == NULL);
    CHECK_STR(plan.end_snap, "s1");
    CHECK_INT(plan.source_size, 32 << 20);
    CHECK_INT(plan.dest_size, 0);
    CHECK(plan.create_destination);
    CHECK(!plan.continues_interrupted && !plan.overwrites_destination);
    CHECK_INT(plan.resume_from, 0);
    CHECK_INT(plan.bytes_resumed, 0);
    CHECK(plan.diff_bytes > 0 && plan.data_bytes > 0);
    CHECK(rbd("info %s >/dev/null 2>&1", dest) != 0); /* not created */

    /* a caller's struct from a newer header, with fields this library does not know */
    memset(&newer, 0xa5, sizeof newer);
    newer.plan.struct_size = sizeof newer;
    CHECK_INT(rbd_diffsync_transfer_plan(t, &newer.plan), 0);
    CHECK_INT(newer.plan.struct_size, sizeof(rbd_diffsync_plan));
    CHECK_INT(newer.plan.source_size, 32 << 20);
    CHECK_INT((unsigned char)newer.later_fields[0], 0xa5); /* left alone */

    /* a caller's struct from an older header, which ends before the fields added since */
    memset(&plan, 0xa5, sizeof plan);
    plan.struct_size = offsetof(rbd_diffsync_plan, resume_from);
    CHECK_INT(rbd_diffsync_transfer_plan(t, &plan), 0);
    CHECK_INT(plan.struct_size, offsetof(rbd_diffsync_plan, resume_from));
    CHECK_INT(plan.source_size, 32 << 20);
    CHECK(plan.create_destination);
    CHECK(plan.resume_from == 0xa5a5a5a5a5a5a5a5ULL); /* beyond its size: left alone */
    rbd_diffsync_transfer_free(t);
}

/* Where to write the keyring of a key the cluster does not know. */
static char bad_keyring[] = "/tmp/ffi2-c-api-keyring.XXXXXX";

static double seconds_since(const struct timespec *start)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

/* The operation timeout is accepted and a plan runs with it; an unreachable monitor fails at
 * the connect timeout given; a key the monitors refuse fails as such, -EACCES, not at the
 * connect timeout (-ETIMEDOUT). */
static void test_timeouts_and_refused_key(void)
{
    static const char key[] = "[client.diffsync]\n\tkey = AQBnpSxlAAAAABAAk1yQ8Z6ZpQ7B5xL5nF5Zxw==\n";
    rbd_diffsync_cluster *c = NULL;
    rbd_diffsync_transfer *t;
    char source[128], dest[128];
    int fd;

    snprintf(source, sizeof source, "%s@s1", src);
    dest_name(dest, sizeof dest, "plan");
    t = transfer_of(source, dest);
    CHECK_INT(rbd_diffsync_cluster_new(&c), 0);
    CHECK_INT(rbd_diffsync_cluster_set_conf(c, conf), 0);
    CHECK_INT(rbd_diffsync_cluster_set_op_timeout_ms(c, 0), 0); /* for ever */
    CHECK_INT(rbd_diffsync_cluster_set_op_timeout_ms(c, 20000), 0);
    CHECK_INT(rbd_diffsync_transfer_set_cluster(t, c), 0);
    CHECK_INT(rbd_diffsync_transfer_plan(t, NULL), 0);
    rbd_diffsync_cluster_free(c);

    /* nothing listens on port 1 */
    CHECK_INT(rbd_diffsync_cluster_new(&c), 0);
    CHECK_INT(rbd_diffsync_cluster_set_conf(c, conf), 0);
    CHECK_INT(rbd_diffsync_cluster_set_mon_host(c, "127.0.0.1:1"), 0);
    CHECK_INT(rbd_diffsync_cluster_set_connect_timeout_ms(c, 2000), 0);
    CHECK_INT(rbd_diffsync_cluster_set_op_timeout_ms(c, 2000), 0);
    CHECK_INT(rbd_diffsync_transfer_set_cluster(t, c), 0);
    CHECK_INT(rbd_diffsync_transfer_plan(t, NULL), -ETIMEDOUT);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "within the connect timeout (2 s)");
    rbd_diffsync_cluster_free(c);

    /* a well-formed key that is not client.diffsync's */
    fd = mkstemp(bad_keyring);
    CHECK(fd >= 0 && write(fd, key, strlen(key)) == (ssize_t)strlen(key));
    if (fd >= 0)
        close(fd);
    CHECK_INT(rbd_diffsync_cluster_new(&c), 0);
    CHECK_INT(rbd_diffsync_cluster_set_conf(c, conf), 0);
    CHECK_INT(rbd_diffsync_cluster_set_id(c, "diffsync"), 0);
    CHECK_INT(rbd_diffsync_cluster_set_keyring(c, bad_keyring), 0);
    CHECK_INT(rbd_diffsync_cluster_set_connect_timeout_ms(c, 60000), 0);
    CHECK_INT(rbd_diffsync_transfer_set_cluster(t, c), 0);
    CHECK_INT(rbd_diffsync_transfer_plan(t, NULL), -EACCES); /* refused, not timed out */
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "client.diffsync");
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "refuse its key");
    unlink(bad_keyring);
    rbd_diffsync_cluster_free(c);
    rbd_diffsync_transfer_free(t);
}

/* client.diffsync (rbd profiles; keyring beside ceph.conf, not named in it) and an option. */
static void test_cluster_settings_apply(void)
{
    rbd_diffsync_cluster *c = NULL;
    rbd_diffsync_transfer *t = NULL;
    rbd_diffsync_plan plan = {.struct_size = sizeof plan};
    char keyring[512], source[128], dest[128];
    const char *slash = strrchr(conf, '/');

    snprintf(keyring, sizeof keyring, "%.*s/client.diffsync.keyring",
             slash ? (int)(slash - conf) : 1, slash ? conf : ".");
    snprintf(source, sizeof source, "%s@s1", src + strlen("rbd/")); /* no pool */
    dest_name(dest, sizeof dest, "plan");
    CHECK_INT(rbd_diffsync_cluster_new(&c), 0);
    CHECK_INT(rbd_diffsync_cluster_set_conf(c, conf), 0);
    CHECK_INT(rbd_diffsync_cluster_set_cluster_name(c, "ceph"), 0);
    CHECK_INT(rbd_diffsync_cluster_set_name(c, "client.admin"), 0);
    CHECK_INT(rbd_diffsync_cluster_set_id(c, "diffsync"), 0); /* the later one wins */
    CHECK_INT(rbd_diffsync_cluster_set_keyring(c, keyring), 0);
    CHECK_INT(rbd_diffsync_cluster_set_connect_timeout_ms(c, 30000), 0);
    CHECK_INT(rbd_diffsync_cluster_set_option(c, "rbd_default_pool", "backups"), 0);
    CHECK_INT(rbd_diffsync_transfer_new(&t), 0);
    CHECK_INT(rbd_diffsync_transfer_set_cluster(t, c), 0);
    CHECK_INT(rbd_diffsync_transfer_set_dest_cluster(t, c), 0);
    CHECK_INT(rbd_diffsync_transfer_set_source(t, source), 0);
    CHECK_INT(rbd_diffsync_transfer_set_dest(t, dest), 0);
    CHECK_INT(rbd_diffsync_transfer_plan(t, &plan), -ENOENT); /* looked for in backups */
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "backups/");

    CHECK_INT(rbd_diffsync_cluster_set_option(c, "rbd_default_pool", "rbd"), 0);
    CHECK_INT(rbd_diffsync_transfer_set_cluster(t, c), 0); /* a copy: set it again */
    CHECK_INT(rbd_diffsync_transfer_plan(t, &plan), 0);
    CHECK_CONTAINS(plan.source, src); /* its pool resolved */
    rbd_diffsync_cluster_free(c);

    /* without its keyring, client.diffsync cannot authenticate: the connect timeout ends it */
    CHECK_INT(rbd_diffsync_cluster_new(&c), 0);
    CHECK_INT(rbd_diffsync_cluster_set_conf(c, conf), 0);
    CHECK_INT(rbd_diffsync_cluster_set_id(c, "diffsync"), 0);
    CHECK_INT(rbd_diffsync_cluster_set_connect_timeout_ms(c, 2000), 0);
    CHECK_INT(rbd_diffsync_transfer_set_cluster(t, c), 0);
    CHECK_INT(rbd_diffsync_transfer_set_dest_cluster(t, NULL), 0);
    CHECK_INT(rbd_diffsync_transfer_plan(t, &plan), -ETIMEDOUT);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "client.diffsync");
    rbd_diffsync_transfer_free(t);
    rbd_diffsync_cluster_free(c);
}

struct progress_log {
    int calls, copying, verifying, last_phase;
    uint64_t last_total;
};

static int log_progress(const rbd_diffsync_progress *p, void *user_data)
{
    struct progress_log *log = user_data;

    CHECK(p->struct_size >= sizeof *p);
    CHECK(p->phase_name != NULL);
    log->calls++;
    log->copying += p->phase == RBD_DIFFSYNC_PHASE_COPYING;
    log->verifying += p->phase == RBD_DIFFSYNC_PHASE_VERIFYING;
    CHECK(p->phase != RBD_DIFFSYNC_PHASE_VERIFYING || strcmp(p->phase_name, "verifying") == 0);
    log->last_phase = (int)p->phase;
    log->last_total = p->bytes_total;
    return 0;
}

static void test_full_then_incremental(void)
{
    rbd_diffsync_stats stats = {.struct_size = sizeof stats};
    struct progress_log log = {.last_phase = -1};
    rbd_diffsync_transfer *t;
    char dest[128], source[128];

    dest_name(dest, sizeof dest, "chain");
    snprintf(source, sizeof source, "%s@s1", src);
    t = transfer_of(source, dest);
    CHECK_INT(rbd_diffsync_transfer_set_progress(t, log_progress, &log, NULL), 0);
    CHECK_INT(rbd_diffsync_transfer_run(t, &stats), 0);
    CHECK_INT(stats.struct_size, sizeof stats);
    CHECK_STR(stats.source, source);
    CHECK_STR(stats.dest, dest);
    CHECK(stats.from_snap == NULL);
    CHECK_STR(stats.end_snap, "s1");
    CHECK(stats.created_destination);
    CHECK_INT(stats.image_size, 32 << 20);
    CHECK_INT(stats.bytes_written + stats.bytes_zeroed + stats.bytes_skipped, stats.diff_bytes);
    CHECK(stats.elapsed_ns > 0);
    CHECK(log.calls >= 2 && log.copying >= 1);
    CHECK_INT(log.last_phase, RBD_DIFFSYNC_PHASE_COMMITTING);
    CHECK(same_content(dest, "s1"));

    snprintf(source, sizeof source, "%s@s2", src);
    CHECK_INT(rbd_diffsync_transfer_set_source(t, source), 0);
    CHECK_INT(rbd_diffsync_transfer_set_from_snap(t, "s1"), 0);
    CHECK_INT(rbd_diffsync_transfer_run(t, &stats), 0);
    CHECK_STR(stats.from_snap, "s1");
    CHECK_STR(stats.end_snap, "s2");
    CHECK(!stats.created_destination);
    CHECK(stats.diff_bytes > 0 && stats.diff_bytes < (32 << 20));
    CHECK(same_content(dest, "s2"));
    CHECK_STR(snaps(dest), "s1 s2 ");

    /* the end snapshot exists now */
    CHECK_INT(rbd_diffsync_transfer_run(t, &stats), -EEXIST);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "s2");
    CHECK_STR(rbd_diffsync_code_name(-EEXIST), "EEXIST");
    rbd_diffsync_transfer_free(t);
}

static void test_destination_changed(void)
{
    rbd_diffsync_transfer *t;
    char dest[128], source[128];

    dest_name(dest, sizeof dest, "changed");
    snprintf(source, sizeof source, "%s@s1", src);
    t = transfer_of(source, dest);
    CHECK_INT(rbd_diffsync_transfer_run(t, NULL), 0);
    /* someone writes into the destination after s1 */
    CHECK_INT(rbd("bench --io-type write --io-size 4096 --io-total 65536 %s >/dev/null", dest),
              0);
    snprintf(source, sizeof source, "%s@s2", src);
    CHECK_INT(rbd_diffsync_transfer_set_source(t, source), 0);
    CHECK_INT(rbd_diffsync_transfer_set_from_snap(t, "s1"), 0);
    CHECK_INT(rbd_diffsync_transfer_run(t, NULL), -RBD_DIFFSYNC_EDESTCHANGED);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), dest);
    CHECK_STR(snaps(dest), "s1 ");
    /* allowed with force: the changed ranges are rewritten from the source */
    CHECK_INT(rbd_diffsync_transfer_set_force(t, true), 0);
    CHECK_INT(rbd_diffsync_transfer_run(t, NULL), 0);
    CHECK(same_content(dest, "s2"));
    rbd_diffsync_transfer_free(t);
}

/* A full transfer into an empty image that another client has open: -EBUSY, nothing written. */
static void test_destination_open_elsewhere(void)
{
    rbd_diffsync_transfer *t;
    char dest[128], source[128];
    struct timespec tenth = {0, 100 * 1000 * 1000};
    int pid, tries;

    dest_name(dest, sizeof dest, "busy");
    snprintf(source, sizeof source, "%s@s1", src);
    CHECK_INT(rbd("create --size 32M %s", dest), 0);
    /* a reader that keeps the image open until killed */
    pid = atoi(rbd_out("bench --io-type read --io-size 4096 --io-threads 1 --io-total 1T %s "
                       ">/dev/null 2>&1 & echo $!",
                       dest));
    CHECK(pid > 0);
    for (tries = 0; tries < 100 && atoi(rbd_out("status %s | grep -c watcher=", dest)) == 0;
         tries++)
        nanosleep(&tenth, NULL);
    CHECK(tries < 100);
    t = transfer_of(source, dest);
    CHECK_INT(rbd_diffsync_transfer_run(t, NULL), -EBUSY);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), dest);
    CHECK_STR(rbd_diffsync_code_name(-EBUSY), "EBUSY");
    CHECK_STR(snaps(dest), "");
    if (pid > 0)
        kill(pid, SIGINT);
    rbd_diffsync_transfer_free(t);
}

static int stop_at_once(const rbd_diffsync_progress *p, void *user_data)
{
    (void)p;
    ++*(int *)user_data;
    return 1;
}

static void test_callback_stops_the_transfer(void)
{
    rbd_diffsync_transfer *t;
    char dest[128], source[128];
    int calls = 0;

    dest_name(dest, sizeof dest, "stopped");
    snprintf(source, sizeof source, "%s@s1", src);
    t = transfer_of(source, dest);
    CHECK_INT(rbd_diffsync_transfer_set_progress(t, stop_at_once, &calls, NULL), 0);
    CHECK_INT(rbd_diffsync_transfer_run(t, NULL), -ECANCELED);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(t), "no end snapshot");
    CHECK(calls >= 1); /* the stop is asked for at the first call; the end is reported too */
    CHECK_STR(snaps(dest), "");
    rbd_diffsync_transfer_free(t);
}

struct cancel_shared {
    rbd_diffsync_transfer *transfer;
    sem_t copying;
    atomic_int posted;
};

static int post_when_copying(const rbd_diffsync_progress *p, void *user_data)
{
    struct cancel_shared *shared = user_data;

    if (p->phase == RBD_DIFFSYNC_PHASE_COPYING && p->bytes_done > 0 &&
        atomic_exchange(&shared->posted, 1) == 0)
        sem_post(&shared->copying);
    return 0;
}

static void *cancel_when_copying(void *arg)
{
    struct cancel_shared *shared = arg;

    sem_wait(&shared->copying);
    CHECK_INT(rbd_diffsync_transfer_cancel(shared->transfer), 0);
    return NULL;
}

static void test_cancel_from_another_thread(void)
{
    struct cancel_shared shared;
    rbd_diffsync_stats stats = {.struct_size = sizeof stats};
    pthread_t canceller;
    char dest[128], source[128];

    dest_name(dest, sizeof dest, "cancelled");
    snprintf(source, sizeof source, "%s@s1", src);
    shared.transfer = transfer_of(source, dest);
    atomic_init(&shared.posted, 0);
    CHECK_INT(sem_init(&shared.copying, 0, 0), 0);
    /* one 4 KiB request at a time: slow enough for the cancel to land mid-copy */
    CHECK_INT(rbd_diffsync_transfer_set_window(shared.transfer, 1), 0);
    CHECK_INT(rbd_diffsync_transfer_set_chunk_size(shared.transfer, 4096), 0);
    CHECK_INT(rbd_diffsync_transfer_set_progress_interval_ms(shared.transfer, 10), 0);
    CHECK_INT(rbd_diffsync_transfer_set_progress(shared.transfer, post_when_copying, &shared,
                                                 NULL),
              0);
    CHECK_INT(pthread_create(&canceller, NULL, cancel_when_copying, &shared), 0);
    CHECK_INT(rbd_diffsync_transfer_run(shared.transfer, &stats), -ECANCELED);
    pthread_join(canceller, NULL);
    CHECK_INT(atomic_load(&shared.posted), 1);
    CHECK_CONTAINS(rbd_diffsync_transfer_last_error(shared.transfer), "no end snapshot");
    CHECK_STR(snaps(dest), "");

    /* the cancel applied to that run only: a rerun completes the transfer */
    CHECK_INT(rbd_diffsync_transfer_set_window(shared.transfer, RBD_DIFFSYNC_DEFAULT_WINDOW), 0);
    CHECK_INT(rbd_diffsync_transfer_set_chunk_size(shared.transfer,
                                                   RBD_DIFFSYNC_DEFAULT_CHUNK_SIZE),
              0);
    CHECK_INT(rbd_diffsync_transfer_run(shared.transfer, &stats), 0);
    CHECK(stats.continued_interrupted);
    CHECK(same_content(dest, "s1"));
    CHECK_STR(snaps(dest), "s1 ");

    /* a cancel with no run in progress stops the next one */
    CHECK_INT(rbd_diffsync_transfer_cancel(shared.transfer), 0);
    CHECK_INT(rbd_diffsync_transfer_plan(shared.transfer, NULL), -ECANCELED);
    sem_destroy(&shared.copying);
    rbd_diffsync_transfer_free(shared.transfer);
}

struct batch_log {
    int calls;
    rbd_diffsync_batch_progress last;
};

static int log_batch(const rbd_diffsync_batch_progress *p, void *user_data)
{
    struct batch_log *log = user_data;

    CHECK(p->struct_size >= sizeof *p);
    CHECK(p->bytes_done <= p->bytes_total || p->bytes_total == 0);
    log->calls++;
    log->last = *p;
    return 0;
}

/* A batch of transfers named dest_name(prefix + k), k < n: source src@snap, from `from`. */
static rbd_diffsync_batch *batch_of(const char *prefix, int n, const char *snap,
                                    const char *from, uint64_t chunk, uint64_t own_rate)
{
    rbd_diffsync_batch *b = NULL;
    char dest[128], source[128], what[32];
    int k;

    CHECK_INT(rbd_diffsync_batch_new(&b), 0);
    snprintf(source, sizeof source, "%s@%s", src, snap);
    for (k = 0; k < n; k++) {
        rbd_diffsync_transfer *t;

        snprintf(what, sizeof what, "%s%d", prefix, k);
        dest_name(dest, sizeof dest, what);
        t = transfer_of(source, dest);
        CHECK_INT(rbd_diffsync_transfer_set_from_snap(t, from), 0);
        if (chunk)
            CHECK_INT(rbd_diffsync_transfer_set_chunk_size(t, chunk), 0);
        CHECK_INT(rbd_diffsync_transfer_set_rate_limit(t, own_rate), 0);
        CHECK_INT(rbd_diffsync_batch_add(b, t), 0);
        /* taken as it was when added */
        CHECK_INT(rbd_diffsync_transfer_set_source(t, "rbd/elsewhere@s9"), 0);
        rbd_diffsync_transfer_free(t);
    }
    CHECK_INT(rbd_diffsync_batch_volume_count(b), n);
    return b;
}

/* Three volumes full, then two of them incremental under the batch's rate limit and the third
 * alone under its own: every destination reads as the source, and neither run is faster than
 * its cap allows (less a chunk per volume and the 64 KiB burst). */
static void test_batch_full_then_incremental(void)
{
    rbd_diffsync_stats stats = {.struct_size = sizeof stats};
    rbd_diffsync_volume_progress vp = {.struct_size = sizeof vp};
    struct batch_log log = {0};
    rbd_diffsync_batch *b;
    rbd_diffsync_transfer *t;
    struct timespec start;
    uint64_t read = 0;
    double took, rate = 512 << 10;
    char dest[128], source[128], what[32];
    int k;

    b = batch_of("many", 3, "s1", NULL, 0, 0);
    CHECK_INT(rbd_diffsync_batch_set_parallel(b, 2), 0);
    CHECK_INT(rbd_diffsync_batch_set_memory_budget(b, 16 << 20), 0);
    CHECK_INT(rbd_diffsync_batch_set_max_requests(b, 32), 0);
    CHECK_INT(rbd_diffsync_batch_set_progress_interval_ms(b, 20), 0);
    CHECK_INT(rbd_diffsync_batch_set_progress(b, log_batch, &log, NULL), 0);
    CHECK_INT(rbd_diffsync_batch_run(b), 0);
    CHECK(log.calls >= 1);
    CHECK_INT(log.last.succeeded, 3);
    CHECK_INT(log.last.queued + log.last.running + log.last.failed, 0);
    snprintf(source, sizeof source, "%s@s1", src);
    for (k = 0; k < 3; k++) {
        snprintf(what, sizeof what, "many%d", k);
        dest_name(dest, sizeof dest, what);
        CHECK_INT(rbd_diffsync_batch_volume_result(b, k), 0);
        CHECK_STR(rbd_diffsync_batch_volume_error_message(b, k), "");
        CHECK_INT(rbd_diffsync_batch_volume_stats(b, k, &stats), 0);
        CHECK_INT(stats.struct_size, sizeof stats);
        CHECK_STR(stats.source, source);
        CHECK_STR(stats.dest, dest);
        CHECK_STR(stats.end_snap, "s1");
        CHECK(stats.created_destination);
        CHECK_INT(rbd_diffsync_batch_volume_progress(b, k, &vp), 0);
        CHECK_INT(vp.state, RBD_DIFFSYNC_VOLUME_SUCCEEDED);
        CHECK(same_content(dest, "s1"));
    }
    rbd_diffsync_batch_free(b);

    b = batch_of("many", 2, "s2", "s1", 64 << 10, 0);
    CHECK_INT(rbd_diffsync_batch_set_rate_limit(b, (uint64_t)rate), 0);
    clock_gettime(CLOCK_MONOTONIC, &start);
    CHECK_INT(rbd_diffsync_batch_run(b), 0);
    took = seconds_since(&start);
    for (k = 0; k < 2; k++) {
        snprintf(what, sizeof what, "many%d", k);
        dest_name(dest, sizeof dest, what);
        CHECK_INT(rbd_diffsync_batch_volume_stats(b, k, &stats), 0);
        CHECK_STR(stats.from_snap, "s1");
        read += stats.bytes_read;
        CHECK(same_content(dest, "s2"));
        CHECK_STR(snaps(dest), "s1 s2 ");
    }
    CHECK(read > (256 << 10));
    if (took < (read - 3 * (64 << 10)) / rate)
        fprintf(stderr, "%.3f s for %llu bytes at %.0f B/s\n", took, (unsigned long long)read,
                rate);
    CHECK(took >= (read - 3 * (64 << 10)) / rate);
    rbd_diffsync_batch_free(b);

    /* a transfer's own rate limit, alone */
    rate = 256 << 10;
    dest_name(dest, sizeof dest, "many2");
    snprintf(source, sizeof source, "%s@s2", src);
    t = transfer_of(source, dest);
    CHECK_INT(rbd_diffsync_transfer_set_from_snap(t, "s1"), 0);
    CHECK_INT(rbd_diffsync_transfer_set_chunk_size(t, 64 << 10), 0);
    CHECK_INT(rbd_diffsync_transfer_set_rate_limit(t, (uint64_t)rate), 0);
    CHECK_INT(rbd_diffsync_transfer_run(t, &stats), 0);
    CHECK(stats.bytes_read > (128 << 10));
    CHECK(stats.elapsed_ns / 1e9 >= (stats.bytes_read - 2 * (64 << 10)) / rate);
    CHECK(same_content(dest, "s2"));
    rbd_diffsync_transfer_free(t);
}

/* One volume of a batch fails, with its own code and message; the other succeeds. */
static void test_batch_one_bad_volume(void)
{
    rbd_diffsync_stats stats = {.struct_size = sizeof stats};
    rbd_diffsync_volume_progress vp = {.struct_size = sizeof vp};
    rbd_diffsync_batch *b = NULL;
    rbd_diffsync_transfer *t;
    char dest[128], source[128];

    CHECK_INT(rbd_diffsync_batch_new(&b), 0);
    dest_name(dest, sizeof dest, "badok");
    snprintf(source, sizeof source, "%s@s1", src);
    t = transfer_of(source, dest);
    CHECK_INT(rbd_diffsync_batch_add(b, t), 0);
    dest_name(dest, sizeof dest, "badx");
    snprintf(source, sizeof source, "%s@nosuch", src);
    CHECK_INT(rbd_diffsync_transfer_set_source(t, source), 0);
    CHECK_INT(rbd_diffsync_transfer_set_dest(t, dest), 0);
    CHECK_INT(rbd_diffsync_batch_add(b, t), 0);
    rbd_diffsync_transfer_free(t);

    CHECK_INT(rbd_diffsync_batch_run(b), 1);
    CHECK_CONTAINS(rbd_diffsync_batch_last_error(b), "1 of 2 volumes failed");
    CHECK_INT(rbd_diffsync_batch_volume_result(b, 0), 0);
    CHECK_INT(rbd_diffsync_batch_volume_result(b, 1), -ENOENT);
    CHECK_CONTAINS(rbd_diffsync_batch_volume_error_message(b, 1), "nosuch");
    CHECK_INT(rbd_diffsync_batch_volume_stats(b, 1, &stats), -ENODATA);
    CHECK_INT(rbd_diffsync_batch_volume_progress(b, 1, &vp), 0);
    CHECK_INT(vp.state, RBD_DIFFSYNC_VOLUME_FAILED);
    CHECK_INT(rbd_diffsync_batch_volume_stats(b, 0, &stats), 0);
    CHECK_STR(stats.end_snap, "s1");
    dest_name(dest, sizeof dest, "badok");
    CHECK(same_content(dest, "s1"));
    dest_name(dest, sizeof dest, "badx");
    CHECK_STR(snaps(dest), "");
    rbd_diffsync_batch_free(b);
}

struct batch_cancel_shared {
    rbd_diffsync_batch *batch;
    sem_t copying;
    atomic_int posted;
    int running_seen;
};

static int post_when_batch_copies(const rbd_diffsync_batch_progress *p, void *user_data)
{
    struct batch_cancel_shared *shared = user_data;
    rbd_diffsync_volume_progress vp = {.struct_size = sizeof vp};

    /* the volumes' progress may be read from the callback */
    CHECK_INT(rbd_diffsync_batch_volume_progress(shared->batch, 0, &vp), 0);
    if (vp.state == RBD_DIFFSYNC_VOLUME_RUNNING && vp.phase_name != NULL)
        shared->running_seen = 1;
    if (p->bytes_done > 0 && atomic_exchange(&shared->posted, 1) == 0)
        sem_post(&shared->copying);
    return 0;
}

static void *cancel_batch_when_copying(void *arg)
{
    struct batch_cancel_shared *shared = arg;

    sem_wait(&shared->copying);
    CHECK_INT(rbd_diffsync_batch_cancel(shared->batch), 0);
    return NULL;
}

static void test_batch_cancel_from_another_thread(void)
{
    struct batch_cancel_shared shared = {0};
    pthread_t canceller;
    char dest[128], what[32];
    int k;

    /* one 4 KiB request at a time per volume: slow enough for the cancel to land mid-copy */
    shared.batch = batch_of("bcancel", 3, "s1", NULL, 4096, 0);
    atomic_init(&shared.posted, 0);
    CHECK_INT(sem_init(&shared.copying, 0, 0), 0);
    CHECK_INT(rbd_diffsync_batch_set_parallel(shared.batch, 2), 0);
    CHECK_INT(rbd_diffsync_batch_set_max_requests(shared.batch, 2), 0);
    CHECK_INT(rbd_diffsync_batch_set_progress_interval_ms(shared.batch, 10), 0);
    CHECK_INT(rbd_diffsync_batch_set_progress(shared.batch, post_when_batch_copies, &shared, NULL),
              0);
    CHECK_INT(pthread_create(&canceller, NULL, cancel_batch_when_copying, &shared), 0);
    CHECK_INT(rbd_diffsync_batch_run(shared.batch), 3);
    pthread_join(canceller, NULL);
    CHECK_INT(atomic_load(&shared.posted), 1);
    CHECK(shared.running_seen);
    for (k = 0; k < 3; k++) {
        snprintf(what, sizeof what, "bcancel%d", k);
        dest_name(dest, sizeof dest, what);
        CHECK_INT(rbd_diffsync_batch_volume_result(shared.batch, k), -ECANCELED);
        CHECK_STR(snaps(dest), "");
    }
    CHECK_CONTAINS(rbd_diffsync_batch_volume_error_message(shared.batch, 2), "before it started");

    /* a cancel with no run in progress stops the next one, before anything starts */
    CHECK_INT(rbd_diffsync_batch_cancel(shared.batch), 0);
    CHECK_INT(rbd_diffsync_batch_run(shared.batch), 3);
    CHECK_INT(rbd_diffsync_batch_volume_result(shared.batch, 0), -ECANCELED);
    sem_destroy(&shared.copying);
    rbd_diffsync_batch_free(shared.batch);
}

/* A run that reads back what it wrote; a caller's stats from an older header. */
struct quiet_shared {
    rbd_diffsync_batch *batch;
    const char *last_error; /* what rbd_diffsync_batch_last_error returned before the run */
    char copy[256];         /* and what it said */
    int calls, unchanged;
};

/* Fails rbd_diffsync_batch_volume_progress in each way it can fail, from the batch's callback,
 * and reads the string of the batch's last error meanwhile, as another thread holding it may:
 * under ASan a failure that replaced it would be a use after free. */
static int fail_volume_progress(const rbd_diffsync_batch_progress *p, void *user_data)
{
    struct quiet_shared *shared = user_data;
    rbd_diffsync_volume_progress vp = {.struct_size = sizeof vp};
    rbd_diffsync_volume_progress small = {.struct_size = sizeof(size_t)};

    (void)p;
    CHECK_INT(rbd_diffsync_batch_volume_progress(shared->batch, 7, &vp), -ERANGE);
    CHECK_INT(rbd_diffsync_batch_volume_progress(shared->batch, 0, NULL), -EINVAL);
    CHECK_INT(rbd_diffsync_batch_volume_progress(shared->batch, 0, &small), -EINVAL);
    if (strcmp(shared->last_error, shared->copy) == 0)
        shared->unchanged++;
    shared->calls++;
    return 0;
}

/* rbd_diffsync_batch_volume_progress, callable from any thread, reports its failures by its
 * code alone: the batch's last error, and the string a previous _last_error returned, stay. */
static void test_batch_volume_progress_keeps_the_last_error(void)
{
    struct quiet_shared shared = {0};
    rbd_diffsync_volume_progress vp = {.struct_size = sizeof vp};
    char dest[128];
    const char *before;

    shared.batch = batch_of("vpquiet", 1, "s1", NULL, 0, 0);
    CHECK_INT(rbd_diffsync_batch_volume_result(shared.batch, 7), -ERANGE);
    before = rbd_diffsync_batch_last_error(shared.batch);
    CHECK_CONTAINS(before, "volume 7 is beyond the 1 volumes");
    shared.last_error = before;
    snprintf(shared.copy, sizeof shared.copy, "%s", before);
    CHECK_INT(rbd_diffsync_batch_set_progress_interval_ms(shared.batch, 10), 0);
    CHECK_INT(rbd_diffsync_batch_set_progress(shared.batch, fail_volume_progress, &shared, NULL),
              0);
    CHECK_INT(rbd_diffsync_batch_run(shared.batch), 0);
    CHECK(shared.calls >= 1);
    CHECK_INT(shared.unchanged, shared.calls);
    /* the very same string: nothing replaced it, and a successful run leaves it */
    CHECK(rbd_diffsync_batch_last_error(shared.batch) == before);
    CHECK_STR(before, shared.copy);
    /* after the run likewise */
    CHECK_INT(rbd_diffsync_batch_volume_progress(shared.batch, 7, &vp), -ERANGE);
    CHECK_INT(rbd_diffsync_batch_volume_progress(shared.batch, 0, NULL), -EINVAL);
    CHECK(rbd_diffsync_batch_last_error(shared.batch) == before);
    CHECK_STR(before, shared.copy);
    CHECK_INT(rbd_diffsync_batch_volume_progress(shared.batch, 0, &vp), 0);
    CHECK_INT(vp.state, RBD_DIFFSYNC_VOLUME_SUCCEEDED);
    dest_name(dest, sizeof dest, "vpquiet0");
    CHECK(same_content(dest, "s1"));
    rbd_diffsync_batch_free(shared.batch);
}

static void test_transfer_verifies(void)
{
    rbd_diffsync_stats stats;
    struct progress_log log = {.last_phase = -1};
    rbd_diffsync_transfer *t;
    char dest[128], source[128];
    uint64_t offset;

    dest_name(dest, sizeof dest, "verified");
    snprintf(source, sizeof source, "%s@s1", src);
    t = transfer_of(source, dest);
    CHECK_INT(rbd_diffsync_transfer_set_verify(t, true), 0);
    CHECK_INT(rbd_diffsync_transfer_set_progress(t, log_progress, &log, NULL), 0);
    memset(&stats, 0xa5, sizeof stats);
    stats.struct_size = sizeof stats;
    CHECK_INT(rbd_diffsync_transfer_run(t, &stats), 0);
    CHECK_INT(stats.struct_size, sizeof stats);
    CHECK(stats.bytes_verified > 0);
    CHECK_INT(stats.bytes_verified, stats.bytes_written + stats.bytes_zeroed + stats.bytes_skipped);
    CHECK_INT(stats.bytes_resumed, 0);
    CHECK_INT(stats.bytes_rechecked, 0);
    CHECK(stats.broke_lock_of == NULL);
    CHECK(log.verifying >= 1);
    CHECK_INT(log.last_phase, RBD_DIFFSYNC_PHASE_COMMITTING);
    CHECK(same_content(dest, "s1"));
    CHECK_INT(rbd_diffsync_transfer_last_error_offset(t, &offset), -ENODATA);

    /* the increment, with stats of the size an older header had: the fields added since are
     * left alone */
    snprintf(source, sizeof source, "%s@s2", src);
    CHECK_INT(rbd_diffsync_transfer_set_source(t, source), 0);
    CHECK_INT(rbd_diffsync_transfer_set_from_snap(t, "s1"), 0);
    memset(&stats, 0xa5, sizeof stats);
    stats.struct_size = offsetof(rbd_diffsync_stats, bytes_resumed);
    CHECK_INT(rbd_diffsync_transfer_run(t, &stats), 0);
    CHECK_INT(stats.struct_size, offsetof(rbd_diffsync_stats, bytes_resumed));
    CHECK_STR(stats.end_snap, "s2");
    CHECK(!stats.created_destination && !stats.continued_interrupted);
    CHECK(stats.diff_bytes > 0);
    CHECK(stats.bytes_resumed == 0xa5a5a5a5a5a5a5a5ULL);
    CHECK(stats.bytes_verified == 0xa5a5a5a5a5a5a5a5ULL);
    CHECK(stats.bytes_rechecked == 0xa5a5a5a5a5a5a5a5ULL);
    CHECK(same_content(dest, "s2"));

    rbd_diffsync_transfer_free(t);

    /* with the size of the header before bytes_rechecked: filled up to bytes_verified */
    dest_name(dest, sizeof dest, "verified-v2");
    snprintf(source, sizeof source, "%s@s1", src);
    t = transfer_of(source, dest);
    CHECK_INT(rbd_diffsync_transfer_set_verify(t, true), 0);
    memset(&stats, 0xa5, sizeof stats);
    stats.struct_size = offsetof(rbd_diffsync_stats, bytes_rechecked);
    CHECK_INT(rbd_diffsync_transfer_run(t, &stats), 0);
    CHECK_INT(stats.struct_size, offsetof(rbd_diffsync_stats, bytes_rechecked));
    CHECK_STR(stats.end_snap, "s1");
    CHECK_INT(stats.bytes_resumed, 0);
    CHECK(stats.bytes_verified > 0);
    CHECK(stats.bytes_rechecked == 0xa5a5a5a5a5a5a5a5ULL);
    CHECK(same_content(dest, "s1"));
    rbd_diffsync_transfer_free(t);
}

/* Imports a 4 MiB image whose bytes are never zero, except the one at `zero_at` if it is below
 * 4 MiB, and snapshots it as @v. */
static int import_pattern(const char *image, long zero_at)
{
    char path[] = "/tmp/ffi2-c-api-image.XXXXXX";
    static unsigned char data[4 << 20];
    long i;
    int fd, status;
    FILE *f;

    for (i = 0; i < (long)sizeof data; i++)
        data[i] = (unsigned char)(i % 251 + 1);
    if (zero_at < (long)sizeof data)
        data[zero_at] = 0;
    if ((fd = mkstemp(path)) < 0 || !(f = fdopen(fd, "wb")))
        return -1;
    status = fwrite(data, 1, sizeof data, f) == sizeof data ? 0 : -1;
    fclose(f);
    if (status == 0)
        status = rbd("import --no-progress %s %s >/dev/null 2>&1", path, image) ||
                 rbd("snap create %s@v >/dev/null 2>&1", image);
    unlink(path);
    return status;
}

static int count_verifying(const rbd_diffsync_progress *p, void *user_data)
{
    if (p->phase == RBD_DIFFSYNC_PHASE_VERIFYING)
        ++*(int *)user_data;
    return 0;
}

/* Two whole images compared: equal, then differing at a known byte, then cancelled. */
static void test_verify_images(void)
{
    const long differs_at = (3 << 20) + 12345;
    rbd_diffsync_verify_stats stats = {.struct_size = sizeof stats};
    rbd_diffsync_cluster *c = NULL;
    rbd_diffsync_verify *v = NULL;
    char a[128], b[128], bad[128], spec[160];
    uint64_t offset = 0;
    int verifying = 0;

    snprintf(a, sizeof a, "%s-va", src);
    dest_name(b, sizeof b, "vb");
    dest_name(bad, sizeof bad, "vbad");
    CHECK_INT(import_pattern(a, 1L << 30), 0);
    CHECK_INT(import_pattern(b, 1L << 30), 0);
    CHECK_INT(import_pattern(bad, differs_at), 0);

    CHECK_INT(rbd_diffsync_cluster_new(&c), 0);
    CHECK_INT(rbd_diffsync_cluster_set_conf(c, conf), 0);
    CHECK_INT(rbd_diffsync_verify_new(&v), 0);
    CHECK_INT(rbd_diffsync_verify_set_cluster(v, c), 0);
    CHECK_INT(rbd_diffsync_verify_set_dest_cluster(v, c), 0);
    rbd_diffsync_cluster_free(c);
    snprintf(spec, sizeof spec, "%s@v", a);
    CHECK_INT(rbd_diffsync_verify_set_source(v, spec), 0);
    snprintf(spec, sizeof spec, "%s@v", b);
    CHECK_INT(rbd_diffsync_verify_set_dest(v, spec), 0);
    CHECK_INT(rbd_diffsync_verify_set_window(v, 4), 0);
    CHECK_INT(rbd_diffsync_verify_set_chunk_size(v, 1 << 20), 0);
    CHECK_INT(rbd_diffsync_verify_set_progress_interval_ms(v, 10), 0);
    CHECK_INT(rbd_diffsync_verify_set_progress(v, count_verifying, &verifying, NULL), 0);
    CHECK_INT(rbd_diffsync_verify_run(v, &stats), 0);
    CHECK_INT(stats.struct_size, sizeof stats);
    CHECK_CONTAINS(stats.source, a);
    CHECK_STR(stats.dest, spec);
    CHECK_INT(stats.image_size, 4 << 20);
    CHECK_INT(stats.bytes_compared, 4 << 20); /* every byte is allocated */
    CHECK_INT(stats.bytes_compared + stats.bytes_skipped, stats.image_size);
    CHECK(stats.elapsed_ns > 0);
    CHECK(verifying >= 1);
    CHECK_INT(rbd_diffsync_verify_last_error_offset(v, &offset), -ENODATA);

    snprintf(spec, sizeof spec, "%s@v", bad);
    CHECK_INT(rbd_diffsync_verify_set_dest(v, spec), 0);
    CHECK_INT(rbd_diffsync_verify_run(v, &stats), -RBD_DIFFSYNC_EMISMATCH);
    CHECK_CONTAINS(rbd_diffsync_verify_last_error(v), bad);
    CHECK_INT(rbd_diffsync_verify_last_error_offset(v, &offset), 0);
    CHECK_INT(offset, differs_at);
    CHECK_STR(rbd_diffsync_code_name(-RBD_DIFFSYNC_EMISMATCH), "EMISMATCH");

    /* the offset is that of the last failure: another failure without one replaces it */
    CHECK_INT(rbd_diffsync_verify_set_window(v, 0), 0);
    CHECK_INT(rbd_diffsync_verify_run(v, &stats), -EINVAL);
    CHECK_INT(rbd_diffsync_verify_last_error_offset(v, &offset), -ENODATA);
    CHECK_INT(rbd_diffsync_verify_set_window(v, RBD_DIFFSYNC_DEFAULT_WINDOW), 0);

    /* a cancel with no run in progress stops the next one */
    CHECK_INT(rbd_diffsync_verify_cancel(v), 0);
    CHECK_INT(rbd_diffsync_verify_run(v, &stats), -ECANCELED);
    CHECK_INT(rbd_diffsync_verify_run(v, &stats), -RBD_DIFFSYNC_EMISMATCH);
    rbd_diffsync_verify_free(v);
    for (size_t i = 0; i < 3; i++) {
        const char *image = i == 0 ? a : i == 1 ? b : bad;
        rbd("snap purge %s >/dev/null 2>&1", image);
        rbd("rm %s >/dev/null 2>&1", image);
    }
}

static int setup(void)
{
    snprintf(src, sizeof src, "rbd/capi-%d", (int)getpid());
    return rbd("create --size 32M %s", src) != 0 ||
           rbd("bench --io-type write --io-pattern rand --io-size 65536 --io-total 24M %s "
               ">/dev/null",
               src) != 0 ||
           rbd("snap create %s@s1 >/dev/null 2>&1", src) != 0 ||
           rbd("bench --io-type write --io-pattern rand --io-size 4096 --io-total 512K %s "
               ">/dev/null",
               src) != 0 ||
           rbd("snap create %s@s2 >/dev/null 2>&1", src) != 0;
}

static void cleanup(void)
{
    static const char *dests[] = {"missing",   "plan",     "chain", "changed", "busy",
                                  "stopped",   "cancelled", "verified", "many0", "many1",
                                  "many2",     "badok",     "badx",     "bcancel0", "bcancel1",
                                  "bcancel2",  "vpquiet0"};
    char dest[128];
    size_t i;

    for (i = 0; i < sizeof dests / sizeof *dests; i++) {
        dest_name(dest, sizeof dest, dests[i]);
        rbd("snap purge %s >/dev/null 2>&1", dest);
        rbd("rm %s >/dev/null 2>&1", dest);
    }
    rbd("snap purge %s >/dev/null 2>&1", src);
    rbd("rm %s >/dev/null 2>&1", src);
}

int main(int argc, char **argv)
{
    int offline = argc == 2 && strcmp(argv[1], "--offline") == 0;

    if (argc != 2) {
        fprintf(stderr, "usage: %s CEPH_CONF | --offline\n", argv[0]);
        return 2;
    }
    run_test("version", test_version);
    run_test("free_null", test_free_null);
    run_test("null_arguments", test_null_arguments);
    run_test("malformed_specs", test_malformed_specs);
    run_test("settings_checked_by_run", test_settings_checked_by_run);
    run_test("verify_settings_checked_by_run", test_verify_settings_checked_by_run);
    run_test("codes_and_messages", test_codes_and_messages);
    run_test("finalizer_once", test_finalizer_once);
    run_test("batch_arguments", test_batch_arguments);
    if (!offline) {
        conf = argv[1];
        if (setup() != 0) {
            fprintf(stderr, "could not make the test images on the cluster of %s\n", conf);
            cleanup();
            return 1;
        }
        run_test("missing_conf_image_and_snapshot", test_missing_conf_image_and_snapshot);
        run_test("plan_writes_nothing", test_plan_writes_nothing);
        run_test("cluster_settings_apply", test_cluster_settings_apply);
        run_test("timeouts_and_refused_key", test_timeouts_and_refused_key);
        run_test("full_then_incremental", test_full_then_incremental);
        run_test("destination_changed", test_destination_changed);
        run_test("destination_open_elsewhere", test_destination_open_elsewhere);
        run_test("callback_stops_the_transfer", test_callback_stops_the_transfer);
        run_test("cancel_from_another_thread", test_cancel_from_another_thread);
        run_test("transfer_verifies", test_transfer_verifies);
        run_test("batch_full_then_incremental", test_batch_full_then_incremental);
        run_test("batch_one_bad_volume", test_batch_one_bad_volume);
        run_test("batch_cancel_from_another_thread", test_batch_cancel_from_another_thread);
        run_test("batch_volume_progress_keeps_the_last_error",
                 test_batch_volume_progress_keeps_the_last_error);
        run_test("verify_images", test_verify_images);
        cleanup();
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
