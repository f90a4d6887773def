/*
 * A full, then an incremental transfer of an RBD image through the C API of rbd-diffsync,
 * with a progress line and the figures of each.
 *
 *   cc -o sync sync.c $(pkg-config --cflags --libs rbd_diffsync)
 *   ./sync /etc/ceph/ceph.conf rbd/vol s1 s2 backups/vol.backup
 *
 * copies rbd/vol@s1 into backups/vol.backup (created, with snapshot s1), then what changed
 * between s1 and s2 (and snapshot s2). Each run reads back what it wrote and compares it with
 * the source before its snapshot is made.
 */
#define _POSIX_C_SOURCE 200809L
#include <rbd_diffsync.h>

#include <stdio.h>
#include <unistd.h>

/* Called on the thread running the transfer; returning nonzero would stop it. */
static int print_progress(const rbd_diffsync_progress *p, void *user_data)
{
    const char *label = user_data;
    double percent = p->bytes_total ? 100.0 * (double)p->bytes_done / (double)p->bytes_total : 0;

    fprintf(stderr, "%s%s: %-10s %5.1f%% of %llu bytes%s%s%s", isatty(2) ? "\r" : "", label,
            p->phase_name, percent, (unsigned long long)p->bytes_total,
            p->waiting_for ? ", waiting for " : "", p->waiting_for ? p->waiting_for : "",
            isatty(2) ? "\033[K" : "\n");
    return 0;
}

static int fail(rbd_diffsync_transfer *transfer, const char *label, int ret)
{
    const char *name = rbd_diffsync_code_name(ret);

    fprintf(stderr, "%s failed: %s (%s): %s\n", label, name ? name : "?",
            rbd_diffsync_strerror(ret), rbd_diffsync_transfer_last_error(transfer));
    return ret;
}

/* Runs `transfer` from `source`, incrementally from `from_snap` unless it is NULL. */
static int sync_image(rbd_diffsync_transfer *transfer, const char *label, const char *source,
                      const char *from_snap)
{
    rbd_diffsync_stats stats = {.struct_size = sizeof stats};
    int ret;

    if ((ret = rbd_diffsync_transfer_set_source(transfer, source)) < 0 ||
        (ret = rbd_diffsync_transfer_set_from_snap(transfer, from_snap)) < 0 ||
        (ret = rbd_diffsync_transfer_set_progress(transfer, print_progress, (void *)label,
                                                  NULL)) < 0 ||
        (ret = rbd_diffsync_transfer_run(transfer, &stats)) < 0)
        return fail(transfer, label, ret);
    if (isatty(2))
        fputc('\n', stderr);
    printf("%s: %s -> %s@%s%s%s: %llu bytes read, %llu written, %llu zeroed, "
           "%llu skipped, %llu verified, %llu-byte image, %.2f s%s\n",
           label, stats.source, stats.dest, stats.end_snap,
           stats.from_snap ? " from " : "", stats.from_snap ? stats.from_snap : "",
           (unsigned long long)stats.bytes_read, (unsigned long long)stats.bytes_written,
           (unsigned long long)stats.bytes_zeroed, (unsigned long long)stats.bytes_skipped,
           (unsigned long long)stats.bytes_verified, (unsigned long long)stats.image_size,
           (double)stats.elapsed_ns / 1e9,
           stats.created_destination ? ", destination created" : "");
    /* a rerun after an interruption starts from the interrupted run's checkpoint */
    if (stats.bytes_resumed > 0)
        printf("%s: %llu bytes done by the interrupted run, not again\n", label,
               (unsigned long long)stats.bytes_resumed);
    /* unless that run had let go of the destination: then they were compared with the source */
    if (stats.bytes_rechecked > 0)
        printf("%s: %llu bytes below its checkpoint compared with the source\n", label,
               (unsigned long long)stats.bytes_rechecked);
    return 0;
}

int main(int argc, char **argv)
{
    rbd_diffsync_cluster *cluster = NULL;
    rbd_diffsync_transfer *transfer = NULL;
    char source[512];
    int ret;

    if (argc != 6) {
        fprintf(stderr, "usage: %s CEPH_CONF POOL/IMAGE SNAP1 SNAP2 DEST_POOL/IMAGE\n"
                        "(librbd_diffsync %s)\n", argv[0], rbd_diffsync_version());
        return 2;
    }
    if (rbd_diffsync_abi_version() != RBD_DIFFSYNC_ABI_VERSION) {
        fprintf(stderr, "librbd_diffsync has ABI %u, this program was built for %u\n",
                rbd_diffsync_abi_version(), RBD_DIFFSYNC_ABI_VERSION);
        return 1;
    }
    if ((ret = rbd_diffsync_cluster_new(&cluster)) < 0 ||
        (ret = rbd_diffsync_cluster_set_conf(cluster, argv[1])) < 0 ||
        (ret = rbd_diffsync_transfer_new(&transfer)) < 0 ||
        (ret = rbd_diffsync_transfer_set_cluster(transfer, cluster)) < 0 ||
        (ret = rbd_diffsync_transfer_set_dest(transfer, argv[5])) < 0 ||
        /* read back and compare what each run wrote, before its end snapshot */
        (ret = rbd_diffsync_transfer_set_verify(transfer, true)) < 0) {
        fail(transfer, "setup", ret);
        goto out;
    }

    snprintf(source, sizeof source, "%s@%s", argv[2], argv[3]);
    if ((ret = sync_image(transfer, "full", source, NULL)) < 0)
        goto out;
    snprintf(source, sizeof source, "%s@%s", argv[2], argv[4]);
    ret = sync_image(transfer, "incremental", source, argv[3]);

out:
    rbd_diffsync_transfer_free(transfer);
    rbd_diffsync_cluster_free(cluster);
    return ret < 0 ? 1 : 0;
}
