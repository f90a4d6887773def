// The C API of rbd-diffsync from C++: handles owned by std::unique_ptr, failures as exceptions,
// a lambda as progress callback (its std::function freed by the finalizer).
//
//   c++ -std=c++17 -o raii raii.cpp $(pkg-config --cflags --libs rbd_diffsync)
//   ./raii /etc/ceph/ceph.conf rbd/vol@s2 backups/vol.backup [s1]
//
// plans the transfer, prints the plan, then runs it and prints what it did.
#include <rbd_diffsync.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

namespace rbd_diffsync {

struct ClusterFree {
    void operator()(rbd_diffsync_cluster *c) const { rbd_diffsync_cluster_free(c); }
};
struct TransferFree {
    void operator()(rbd_diffsync_transfer *t) const { rbd_diffsync_transfer_free(t); }
};
using ClusterPtr = std::unique_ptr<rbd_diffsync_cluster, ClusterFree>;
using TransferPtr = std::unique_ptr<rbd_diffsync_transfer, TransferFree>;
using ProgressFn = std::function<bool(const rbd_diffsync_progress &)>;

class Error : public std::runtime_error {
  public:
    Error(int code, const std::string &message)
        : std::runtime_error(message + " (" + rbd_diffsync_strerror(code) + ")"), code_(code) {}
    int code() const { return code_; }

  private:
    int code_;
};

inline void check(int ret, const char *message)
{
    if (ret < 0)
        throw Error(ret, message);
}

class Cluster {
  public:
    explicit Cluster(const std::string &conf)
    {
        rbd_diffsync_cluster *c = nullptr;
        check(rbd_diffsync_cluster_new(&c), "rbd_diffsync_cluster_new");
        handle_.reset(c);
        int ret = rbd_diffsync_cluster_set_conf(c, conf.c_str());
        check(ret, rbd_diffsync_cluster_last_error(c));
    }
    const rbd_diffsync_cluster *get() const { return handle_.get(); }

  private:
    ClusterPtr handle_;
};

class Transfer {
  public:
    Transfer(const std::string &source, const std::string &dest)
    {
        rbd_diffsync_transfer *t = nullptr;
        check(rbd_diffsync_transfer_new(&t), "rbd_diffsync_transfer_new");
        handle_.reset(t);
        ok(rbd_diffsync_transfer_set_source(t, source.c_str()));
        ok(rbd_diffsync_transfer_set_dest(t, dest.c_str()));
    }
    Transfer &cluster(const Cluster &c)
    {
        ok(rbd_diffsync_transfer_set_cluster(handle_.get(), c.get()));
        return *this;
    }
    Transfer &from_snap(const std::string &snap)
    {
        ok(rbd_diffsync_transfer_set_from_snap(handle_.get(), snap.c_str()));
        return *this;
    }
    // `f` returns false to stop the transfer. The library frees the copy when it is replaced
    // or the transfer is destroyed.
    Transfer &on_progress(ProgressFn f)
    {
        auto *copy = new ProgressFn(std::move(f));
        int ret = rbd_diffsync_transfer_set_progress(handle_.get(), call, copy, destroy);
        if (ret < 0)
            delete copy;
        ok(ret);
        return *this;
    }
    rbd_diffsync_plan plan()
    {
        rbd_diffsync_plan p{};
        p.struct_size = sizeof p;
        ok(rbd_diffsync_transfer_plan(handle_.get(), &p));
        return p;
    }
    rbd_diffsync_stats run()
    {
        rbd_diffsync_stats s{};
        s.struct_size = sizeof s;
        ok(rbd_diffsync_transfer_run(handle_.get(), &s));
        return s;
    }

  private:
    void ok(int ret) { check(ret, rbd_diffsync_transfer_last_error(handle_.get())); }

    // No exception may leave a callback: a throwing one stops the transfer instead.
    static int call(const rbd_diffsync_progress *p, void *user_data) noexcept
    {
        try {
            return (*static_cast<ProgressFn *>(user_data))(*p) ? 0 : 1;
        } catch (...) {
            return 1;
        }
    }
    static void destroy(void *user_data) noexcept { delete static_cast<ProgressFn *>(user_data); }

    TransferPtr handle_;
};

} // namespace rbd_diffsync

static const char *or_none(const char *s) { return s ? s : "(none)"; }

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 5) {
        std::fprintf(stderr, "usage: %s CEPH_CONF POOL/IMAGE@SNAP DEST_POOL/IMAGE [FROM_SNAP]\n",
                     argv[0]);
        return 2;
    }
    unsigned calls = 0;
    try {
        rbd_diffsync::Cluster cluster(argv[1]);
        rbd_diffsync::Transfer transfer(argv[2], argv[3]);
        transfer.cluster(cluster);
        if (argc == 5)
            transfer.from_snap(argv[4]);
        transfer.on_progress([&calls](const rbd_diffsync_progress &p) {
            ++calls;
            std::fprintf(stderr, "%s %llu/%llu\n", p.phase_name,
                         static_cast<unsigned long long>(p.bytes_done),
                         static_cast<unsigned long long>(p.bytes_total));
            return true;
        });

        rbd_diffsync_plan plan = transfer.plan();
        std::printf("plan: %s -> %s, from %s, creates destination: %s, %llu diff bytes\n",
                    plan.source, plan.dest, or_none(plan.from_snap),
                    plan.create_destination ? "yes" : "no",
                    static_cast<unsigned long long>(plan.diff_bytes));
        rbd_diffsync_stats stats = transfer.run();
        std::printf("run: %s -> %s@%s, %llu bytes written, %llu zeroed, %u progress calls\n",
                    stats.source, stats.dest, or_none(stats.end_snap),
                    static_cast<unsigned long long>(stats.bytes_written),
                    static_cast<unsigned long long>(stats.bytes_zeroed), calls);
    } catch (const rbd_diffsync::Error &e) {
        std::fprintf(stderr, "error %d: %s\n", e.code(), e.what());
        return 1;
    }
    return 0;
}
