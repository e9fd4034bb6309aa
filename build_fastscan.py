"""Build netsnoop's C process scanner (_fastscan.c) with cffi, in API mode, out of line.

    python3 build_fastscan.py      builds _fastscan_cffi*.so beside this file

`pip install .` builds it too (setup.py passes cffi_modules=["build_fastscan.py:ffibuilder"]).
The cffi module is named _fastscan_cffi, not _fastscan: compile() writes the
generated <module>.c next to the .so and would overwrite the hand-written
_fastscan.c.  Including the C file (rather than listing it in sources=) lets the
compiler check the cdef below against the real prototypes.
"""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

CDEF = """
#define FS_TIMEOUT ...
#define FS_MOVED ...
#define FS_NOTIFY ...
#define FS_INTERRUPTED ...
#define FS_REWATCH ...
int fs_list_pids(const char *dir, int *out, int cap);
int fs_read_counter(int fd);
int fs_wait(int counter_fd, int notify_fd, int last, int timeout_us, int step_us,
            int quiet, int *counter, const char *aside_root, int *aside);
int fs_step_aside(const char *root, int pid);
int fs_inotify_init(void);
int fs_inotify_add(int fd, const char *path, unsigned int mask);
int fs_socket_inodes(int dir_fd, uint64_t *out, int cap);
struct fs_diag_row {
    uint8_t family, state, timer, retrans;
    uint16_t sport, dport;
    uint8_t src[16], dst[16];
    uint32_t expires, rqueue, wqueue, uid, inode;
    int has_bytes;
    uint64_t bytes_acked, bytes_received;
};
int fs_diag_parse(const uint8_t *data, long len, uint32_t seq, struct fs_diag_row *out,
                  int cap, int *count, int *err, int *skipped);
long fs_diag_json_bound(int rows, int comm_len);
long fs_diag_json(const struct fs_diag_row *rows, int n_rows, const uint64_t *inodes,
                  const int *ends, const int *pids, int n_pids, const char *comms,
                  const int *comm_at, int own_pid, char *out);
struct fs_snapshot {
    int pid;
    int uid;
    int stat_len;
    int cmdline_len;
    double t;
    char stat[1024];
    char cmdline[4096];
};
struct fs_catcher;
struct fs_catcher *fs_catcher_start(const char *root, const char *paths, int n_paths);
int fs_catcher_find(struct fs_catcher *c, int pid, struct fs_snapshot *out);
void fs_catcher_stop(struct fs_catcher *c);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("_fastscan_cffi", '#include "_fastscan.c"',
                      include_dirs=[HERE], extra_compile_args=["-O2", "-Wall", "-pthread"],
                      extra_link_args=["-pthread"],
                      depends=[os.path.join(HERE, "_fastscan.c")])

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=HERE, verbose=False)
