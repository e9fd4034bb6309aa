/*
 * _fastscan.c: the C half of netsnoop's process scanner (--procs).
 *
 * Built by build_fastscan.py through cffi (API mode, out of line) into the
 * extension module _fastscan_cffi.  netsnoop.py keeps the whole detection
 * algorithm; this file only does the two things that are hot:
 *
 *   fs_list_pids()   list the numeric directories of /proc with getdents64
 *                    straight into an int array (no Python objects per entry);
 *   fs_wait()        poll the last-PID counter of /proc/loadavg and an
 *                    inotify fd until something happens.  cffi releases the
 *                    GIL for the call, so the wait costs Python nothing and
 *                    returns to it only when there is work.  Woken by a new
 *                    PID, it first steps aside (fs_step_aside()) when that
 *                    newborn waits for the CPU the scanner runs on.
 *   fs_catcher_start()  a thread of its own that reads the newborns' new
 *                    command lines the moment they exec; Python asks it
 *                    (fs_catcher_find()) for a newborn gone before Python
 *                    read it (see its section).
 *
 * and for the net views:
 *
 *   fs_socket_inodes()  the socket inodes among the links of /proc/PID/fd: a
 *                    readlink per fd (20,000 of them for a busy server), done
 *                    without the GIL so that it truly overlaps the reading
 *                    and parsing of /proc/PID/net in the other thread;
 *   fs_diag_parse(), fs_diag_json()  the tcp tab's --json rows from a
 *                    sock_diag dump (see their section at the end).
 *
 * Every function returns a negative errno on failure.
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE     /* ppoll() */
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* fs_wait() results (the counter is returned through *counter). */
#define FS_TIMEOUT 0        /* nothing happened before the timeout */
#define FS_MOVED 1          /* the last-PID counter changed */
#define FS_NOTIFY 2         /* the inotify fd is readable */
#define FS_INTERRUPTED 3    /* a signal arrived: let Python run its handlers */
#define FS_REWATCH 4        /* quiet: a watch ended (IN_IGNORED): add them again */

/* The record getdents64(2) fills; glibc declares no such type. */
struct fs_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* "1234" -> 1234; anything but plain ASCII digits fitting an int -> -1. */
static int fs_parse_pid(const char *name)
{
    long value = 0;

    if (*name == '\0')
        return -1;
    for (; *name; name++) {
        if (*name < '0' || *name > '9')
            return -1;
        value = value * 10 + (*name - '0');
        if (value > INT_MAX)
            return -1;
    }
    return (int)value;
}

/*
 * The PIDs in directory `dir` (normally /proc): numeric directories only
 * (DT_UNKNOWN is accepted, as a filesystem may not fill d_type).  Writes at
 * most `cap` of them to `out` and returns how many there are, which may be
 * more than `cap`: the caller then retries with a larger array.
 */
int fs_list_pids(const char *dir, int *out, int cap)
{
    /* getdents64 needs an 8-byte aligned buffer; per thread, as the GIL is released. */
    static __thread uint64_t buf[4096];
    char *bytes = (char *)buf;
    int count = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    if (fd < 0)
        return -errno;
    for (;;) {
        long got = syscall(SYS_getdents64, fd, buf, sizeof(buf));
        long off;

        if (got < 0) {
            int err = errno;
            close(fd);
            return -err;
        }
        if (got == 0)
            break;
        for (off = 0; off < got;) {
            struct fs_dirent64 *d = (struct fs_dirent64 *)(bytes + off);
            int pid;

            off += d->d_reclen;
            if (d->d_type != DT_DIR && d->d_type != DT_UNKNOWN)
                continue;
            pid = fs_parse_pid(d->d_name);
            if (pid <= 0)
                continue;
            if (count < cap)
                out[count] = pid;
            count++;
        }
    }
    close(fd);
    return count;
}

/*
 * The last field of /proc/loadavg, "0.00 0.01 0.05 1/80 4242": the last PID
 * allocated in the reader's PID namespace.  pread() at offset 0 makes the
 * kernel regenerate the seq file, so one kept-open fd serves every call.
 */
int fs_read_counter(int fd)
{
    char text[128];
    ssize_t len = pread(fd, text, sizeof(text) - 1, 0);
    long value = 0;
    ssize_t i;

    if (len < 0)
        return -errno;
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == ' '))
        len--;
    for (i = len; i > 0 && text[i - 1] >= '0' && text[i - 1] <= '9'; i--)
        ;
    if (i == len || (i > 0 && text[i - 1] != ' '))
        return -EINVAL;         /* the last field must be a plain number */
    for (; i < len; i++) {
        value = value * 10 + (text[i] - '0');
        if (value > INT_MAX)
            return -EINVAL;
    }
    return (int)value;
}

static long fs_elapsed_us(const struct timespec *start)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) * 1000000L
        + (now.tv_nsec - start->tv_nsec) / 1000L;
}

/*
 * Sleep `us` microseconds, or less if notify_fd (when >= 0) becomes readable.
 * Returns FS_TIMEOUT, FS_NOTIFY, FS_INTERRUPTED or -errno.
 */
static int fs_nap(int notify_fd, long us)
{
    struct timespec ts = { us / 1000000L, (us % 1000000L) * 1000L };
    struct pollfd pfd = { notify_fd, POLLIN, 0 };
    int ready;

    if (notify_fd < 0) {
        if (nanosleep(&ts, NULL) == 0)
            return FS_TIMEOUT;
        return errno == EINTR ? FS_INTERRUPTED : -errno;
    }
    ready = ppoll(&pfd, 1, &ts, NULL);
    if (ready > 0)
        return FS_NOTIFY;
    if (ready == 0)
        return FS_TIMEOUT;
    return errno == EINTR ? FS_INTERRUPTED : -errno;
}

/*
 * Quiet: read and drop the queued inotify events.  -> 1 when one of them ends
 * a watch (IN_IGNORED: ld.so.cache replaced) or tells of lost events, else 0.
 */
static int fs_drop_events(int notify_fd)
{
    static __thread uint64_t buf[512];      /* 8-byte aligned, like the events */
    int rewatch = 0;

    for (;;) {
        ssize_t got = read(notify_fd, buf, sizeof(buf));
        ssize_t off = 0;

        if (got <= 0)
            return rewatch;
        while (off + (ssize_t)sizeof(struct inotify_event) <= got) {
            struct inotify_event *ev = (struct inotify_event *)((char *)buf + off);

            if (ev->mask & (IN_IGNORED | IN_Q_OVERFLOW))
                rewatch = 1;
            off += sizeof(struct inotify_event) + ev->len;
        }
    }
}

/* Field n (3 = the state) of a stat line, or NULL.  The name (field 2) may hold
   anything, ")" too: fields are counted from its last ")". */
static const char *fs_stat_field(const char *text, int n)
{
    const char *p = strrchr(text, ')');
    int field;

    if (p == NULL || p[1] != ' ')
        return NULL;
    p += 2;
    for (field = 3; field < n; field++) {
        p = strchr(p, ' ');
        if (p == NULL)
            return NULL;
        p++;
    }
    return p;
}

/*
 * The newborn PID, runnable on the CPU this thread runs on, is held there by the
 * scanner itself: move this thread to the other CPUs it may use, at once (Python,
 * cold after a quiet spell, takes ~0.3 ms to get there, and the newborn may be
 * gone by then: docs/scanner.md, "Stepping aside").  root: the /proc to read.
 * -> 1 when moved, 0 when not (not runnable, another CPU, one CPU left, gone).
 */
int fs_step_aside(const char *root, int pid)
{
    char path[PATH_MAX], text[1024];
    const char *state, *p;
    ssize_t len;
    cpu_set_t cpus;
    int fd, cpu;

    if (snprintf(path, sizeof(path), "%s/%d/stat", root, pid) >= (int)sizeof(path))
        return 0;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    len = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (len <= 0)
        return 0;
    text[len] = '\0';
    state = fs_stat_field(text, 3);
    p = fs_stat_field(text, 39);    /* the CPU it last ran on */
    if (state == NULL || *state != 'R' || p == NULL || *p < '0' || *p > '9')
        return 0;
    cpu = atoi(p);
    if (cpu != sched_getcpu() || sched_getaffinity(0, sizeof(cpus), &cpus) != 0)
        return 0;
    if (!CPU_ISSET(cpu, &cpus) || CPU_COUNT(&cpus) < 2)
        return 0;
    CPU_CLR(cpu, &cpus);
    return sched_setaffinity(0, sizeof(cpus), &cpus) == 0;
}

/*
 * Wait up to `timeout_us` for the counter to differ from `last`, checking it
 * every `step_us`, and for notify_fd (-1: none) to become readable.  Stores
 * the counter last read in *counter and returns FS_MOVED, FS_NOTIFY,
 * FS_TIMEOUT, FS_INTERRUPTED (a signal: Python must run its handlers),
 * FS_REWATCH, or -errno.  The inotify events are left unread for Python to
 * parse, unless `quiet`: then nothing is under watch, and an exec that did not
 * move the counter is another PID namespace's or an old process's, which
 * Python would only drop: its events are dropped here, without waking Python
 * (docs/scanner.md, "Idle").  aside_root: NULL, or the /proc whose newborns
 * the scanner may step aside from (fs_step_aside(); *aside is then 1 when it did).
 */
int fs_wait(int counter_fd, int notify_fd, int last, int timeout_us, int step_us,
            int quiet, int *counter, const char *aside_root, int *aside)
{
    struct timespec start;

    *aside = 0;
    if (step_us <= 0)
        step_us = 1000;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int cur = fs_read_counter(counter_fd);
        long left;
        int woke;

        if (cur < 0)
            return cur;
        *counter = cur;
        if (cur != last) {
            if (aside_root != NULL)
                *aside = fs_step_aside(aside_root, cur);
            return FS_MOVED;
        }
        left = timeout_us - fs_elapsed_us(&start);
        if (left <= 0)
            return FS_TIMEOUT;
        woke = fs_nap(notify_fd, left < step_us ? left : step_us);
        if (woke == FS_NOTIFY && (quiet || aside_root != NULL)) {
            /* the exec that woke us: its fork moved the counter */
            cur = fs_read_counter(counter_fd);
            if (cur < 0)
                return cur;
            *counter = cur;
            if (cur == last && quiet) {
                if (fs_drop_events(notify_fd))
                    return FS_REWATCH;
                continue;
            }
            if (cur != last && aside_root != NULL)
                *aside = fs_step_aside(aside_root, cur);
        }
        if (woke != FS_TIMEOUT)
            return woke;
    }
}

/*
 * The catcher: a thread that reads each newborn's new command line as it execs.
 *
 * In a build both CPUs run compilers while configure and make start programs
 * that live a millisecond (mkdir, mv, cat).  Python, woken by such an exec,
 * runs ~0.3 ms of interpreter per wake-up and so uses up its share of the CPU:
 * woken again, the scheduler lets it wait for the next tick (up to 4 ms at
 * HZ=250) while the program lives and dies (perf: the scanner runnable, not
 * running, through the whole life of nearly every missed program).  This
 * thread does only the reads that cannot wait, a few microseconds of C per
 * wake-up, so it keeps its share and, with the short slice, preempts a
 * compiler at once.  It is woken by the same inotify opens (an exec opens its
 * program file, then ld.so.cache) on an inotify fd of its own, follows each
 * new PID for FS_CATCH_FOLLOW_US, and keeps what it read in a ring; Python
 * asks it (fs_catcher_find()) only for a newborn gone before Python read its
 * new command line.  Quiet, it sleeps in ppoll without a timeout.
 *
 * A reading is kept only when it shows an exec: a command line other than the
 * one read before, or a name other than the parent's (read at the first
 * sighting).  The name is read after the command line: execve sets the new
 * name before the new arguments show, so the name kept is the program's.
 */

#define FS_CATCH_RING 256           /* readings kept, newest over oldest */
#define FS_CATCH_FOLLOW 64          /* newborns followed at once */
#define FS_CATCH_STAT 1024
#define FS_CATCH_CMDLINE 4096
#define FS_CATCH_FOLLOW_US 50000    /* a newborn is followed this long for its exec */
#define FS_CATCH_SPIN_US 500        /* after a wake-up, re-read this long ... */
#define FS_CATCH_STEP_US 100        /* ... this often (the new arguments show ~0.1 ms
                                       after the open of the program file) */
#define FS_CATCH_PATHS 64

struct fs_snapshot {
    int pid;
    int uid;                        /* owner of /proc/PID: the effective uid */
    int stat_len;
    int cmdline_len;                /* -1: longer than the buffer (not kept) */
    double t;                       /* CLOCK_MONOTONIC seconds of the reading */
    char stat[FS_CATCH_STAT];
    char cmdline[FS_CATCH_CMDLINE];
};

struct fs_newborn {
    int pid, uid, stat_fd, cmd_fd;
    long since_us;
    char parent_comm[64];
    int last_len;                   /* the last non-empty command line read */
    char last[FS_CATCH_CMDLINE];
};

struct fs_catcher {
    pthread_t thread;
    pthread_mutex_t lock;           /* guards ring and next */
    int notify_fd, counter_fd, wake[2];
    int last;
    char root[PATH_MAX];
    int n_paths;
    char paths[FS_CATCH_PATHS][PATH_MAX];
    int n_born;
    struct fs_newborn born[FS_CATCH_FOLLOW];
    long next;                      /* readings written so far */
    struct fs_snapshot ring[FS_CATCH_RING];
    struct fs_snapshot scratch;
};

static long fs_now_us(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1000000L + now.tv_nsec / 1000;
}

/* The name in a stat line ("pid (name) ..."), copied into out; 0 when malformed. */
static int fs_stat_comm(const char *text, char *out, size_t cap)
{
    const char *open = strchr(text, '('), *close = strrchr(text, ')');
    size_t len;

    if (open == NULL || close == NULL || close < open)
        return 0;
    len = (size_t)(close - open - 1);
    if (len >= cap)
        len = cap - 1;
    memcpy(out, open + 1, len);
    out[len] = '\0';
    return 1;
}

static ssize_t fs_pread_text(int fd, char *buf, size_t cap)
{
    ssize_t len = pread(fd, buf, cap - 1, 0);

    if (len >= 0)
        buf[len] = '\0';
    return len;
}

/* root/pid/name opened read-only, or -1. */
static int fs_open_proc(const struct fs_catcher *c, int pid, const char *name)
{
    char path[PATH_MAX];

    if (snprintf(path, sizeof(path), "%s/%d/%s", c->root, pid, name) >= (int)sizeof(path))
        return -1;
    return open(path, O_RDONLY | O_CLOEXEC);
}

/* A new PID: follow it unless it is a thread or already gone. */
static void fs_catcher_sight(struct fs_catcher *c, int pid)
{
    struct fs_newborn *nb;
    char text[FS_CATCH_STAT];
    const char *field;
    struct stat info;
    int fd, ppid;

    if (c->n_born == FS_CATCH_FOLLOW) {         /* a flood: the oldest gives way */
        close(c->born[0].stat_fd);
        close(c->born[0].cmd_fd);
        memmove(&c->born[0], &c->born[1], (FS_CATCH_FOLLOW - 1) * sizeof(c->born[0]));
        c->n_born--;
    }
    fd = fs_open_proc(c, pid, "stat");
    if (fd < 0)
        return;
    field = fs_pread_text(fd, text, sizeof(text)) > 0 ? fs_stat_field(text, 38) : NULL;
    if (field == NULL || strncmp(field, "-1 ", 3) == 0 || fstat(fd, &info) != 0) {
        close(fd);                  /* a thread (exit_signal -1), or gone */
        return;
    }
    nb = &c->born[c->n_born];
    nb->pid = pid;
    nb->uid = (int)info.st_uid;
    nb->stat_fd = fd;
    nb->since_us = fs_now_us();
    nb->last_len = 0;
    nb->parent_comm[0] = '\0';
    field = fs_stat_field(text, 4);
    ppid = field != NULL ? atoi(field) : 0;
    fd = fs_open_proc(c, ppid, "stat");
    if (fd >= 0) {
        if (fs_pread_text(fd, text, sizeof(text)) > 0)
            fs_stat_comm(text, nb->parent_comm, sizeof(nb->parent_comm));
        close(fd);
    }
    nb->cmd_fd = fs_open_proc(c, pid, "cmdline");
    if (nb->cmd_fd < 0) {
        close(nb->stat_fd);
        return;
    }
    c->n_born++;
}

/* Read a followed newborn again; keep the reading when it shows an exec.
   -> 0 while it is worth following, -1 once it is gone. */
static int fs_catcher_read(struct fs_catcher *c, struct fs_newborn *nb)
{
    struct fs_snapshot *snap = &c->scratch;
    char comm[64];
    ssize_t len = pread(nb->cmd_fd, snap->cmdline, sizeof(snap->cmdline), 0);
    int first;

    if (len < 0)
        return -1;                  /* reaped */
    if (len == 0)
        return 0;                   /* inside execve, or a zombie */
    if (len == nb->last_len && memcmp(snap->cmdline, nb->last, (size_t)len) == 0)
        return 0;
    first = nb->last_len == 0;
    memcpy(nb->last, snap->cmdline, (size_t)len);
    nb->last_len = (int)len;
    snap->stat_len = (int)fs_pread_text(nb->stat_fd, snap->stat, sizeof(snap->stat));
    if (snap->stat_len <= 0 || !fs_stat_comm(snap->stat, comm, sizeof(comm)))
        return -1;
    if (first && strcmp(comm, nb->parent_comm) == 0)
        return 0;                   /* its parent's image, as forked */
    snap->pid = nb->pid;
    snap->uid = nb->uid;
    snap->cmdline_len = len == (ssize_t)sizeof(snap->cmdline) ? -1 : (int)len;
    snap->t = fs_now_us() / 1e6;
    pthread_mutex_lock(&c->lock);
    c->ring[c->next % FS_CATCH_RING] = *snap;
    c->next++;
    pthread_mutex_unlock(&c->lock);
    return 0;
}

static void fs_catcher_watch(struct fs_catcher *c)
{
    int i;

    for (i = 0; i < c->n_paths; i++)
        inotify_add_watch(c->notify_fd, c->paths[i], IN_OPEN);
}

static void fs_catcher_sight_new(struct fs_catcher *c)
{
    int cur = fs_read_counter(c->counter_fd), pid;

    if (cur < 0 || cur == c->last)
        return;
    /* more new PIDs than it can follow (threads made while nothing exec'd, a fork
       storm), or a wrap: the newest, where the exec that woke it is */
    pid = cur > c->last && cur - c->last <= FS_CATCH_FOLLOW ? c->last + 1
        : cur - FS_CATCH_FOLLOW + 1;
    for (; pid <= cur; pid++)
        if (pid > 0)
            fs_catcher_sight(c, pid);
    c->last = cur;
}

static void fs_catcher_read_all(struct fs_catcher *c)
{
    long now = fs_now_us();
    int i, kept = 0;

    for (i = 0; i < c->n_born; i++) {
        struct fs_newborn *nb = &c->born[i];

        if (now - nb->since_us > FS_CATCH_FOLLOW_US || fs_catcher_read(c, nb) < 0) {
            close(nb->stat_fd);
            close(nb->cmd_fd);
            continue;
        }
        if (kept != i)
            c->born[kept] = *nb;
        kept++;
    }
    c->n_born = kept;
}

/* Ask for a 0.1 ms slice for this thread, as netsnoop.py's request_short_slice()
   does for its own (see there); nice and policy stay as they are. */
static void fs_request_short_slice(void)
{
#ifdef SYS_sched_setattr
    struct {
        uint32_t size, policy;
        uint64_t flags;
        int32_t nice;
        uint32_t priority;
        uint64_t runtime, deadline, period;
        uint32_t util_min, util_max;
    } attr;

    memset(&attr, 0, sizeof(attr));
    attr.size = sizeof(attr);
    attr.nice = getpriority(PRIO_PROCESS, 0);
    attr.runtime = 100000;
    syscall(SYS_sched_setattr, 0, &attr, 0);       /* refused before Linux 6.12: fine */
#endif
}

static void *fs_catcher_run(void *arg)
{
    struct fs_catcher *c = arg;
    long spin_until = 0;

    fs_request_short_slice();
    for (;;) {
        struct pollfd fds[2] = {{c->notify_fd, POLLIN, 0}, {c->wake[0], POLLIN, 0}};
        struct timespec step = {0, 0}, *timeout = NULL;
        long now = fs_now_us();

        if (now < spin_until)
            step.tv_nsec = FS_CATCH_STEP_US * 1000L;
        else if (c->n_born > 0)
            step.tv_nsec = 1000000L;    /* a static program opens no watched file */
        if (c->n_born > 0 || now < spin_until)
            timeout = &step;
        if (ppoll(fds, 2, timeout, NULL) < 0 && errno != EINTR)
            break;
        if (fds[1].revents)
            break;                      /* fs_catcher_stop() */
        if (fds[0].revents) {
            if (fs_drop_events(c->notify_fd))
                fs_catcher_watch(c);    /* ld.so.cache replaced: watch the new one */
            spin_until = fs_now_us() + FS_CATCH_SPIN_US;
        }
        fs_catcher_sight_new(c);
        fs_catcher_read_all(c);
    }
    return NULL;
}

/* The catcher on the /proc at root (its loadavg and PIDs), woken by opens of the
   n_paths paths given one after the other, each ended by a NUL.  -> a handle for
   fs_catcher_find() and fs_catcher_stop(), or NULL (then Python does without). */
struct fs_catcher *fs_catcher_start(const char *root, const char *paths, int n_paths)
{
    struct fs_catcher *c = calloc(1, sizeof(*c));
    char path[PATH_MAX + 16];
    sigset_t all, old;
    int i, started;

    if (c == NULL)
        return NULL;
    c->notify_fd = c->counter_fd = c->wake[0] = c->wake[1] = -1;
    snprintf(c->root, sizeof(c->root), "%s", root);
    for (i = 0; i < n_paths && i < FS_CATCH_PATHS; i++) {
        snprintf(c->paths[i], sizeof(c->paths[i]), "%s", paths);
        paths += strlen(paths) + 1;
    }
    c->n_paths = i;
    snprintf(path, sizeof(path), "%s/loadavg", root);
    c->counter_fd = open(path, O_RDONLY | O_CLOEXEC);
    c->notify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (c->counter_fd < 0 || c->notify_fd < 0 || pipe2(c->wake, O_CLOEXEC) != 0)
        goto fail;
    c->last = fs_read_counter(c->counter_fd);
    fs_catcher_watch(c);
    pthread_mutex_init(&c->lock, NULL);
    /* signals stay with Python's thread: the new one starts with all blocked */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    started = pthread_create(&c->thread, NULL, fs_catcher_run, c) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (started)
        return c;
    pthread_mutex_destroy(&c->lock);
fail:
    if (c->counter_fd >= 0)
        close(c->counter_fd);
    if (c->notify_fd >= 0)
        close(c->notify_fd);
    if (c->wake[0] >= 0) {
        close(c->wake[0]);
        close(c->wake[1]);
    }
    free(c);
    return NULL;
}

/* The newest reading of PID that shows an exec, copied into *out -> 1, or 0. */
int fs_catcher_find(struct fs_catcher *c, int pid, struct fs_snapshot *out)
{
    long i, oldest;
    int found = 0;

    pthread_mutex_lock(&c->lock);
    oldest = c->next > FS_CATCH_RING ? c->next - FS_CATCH_RING : 0;
    for (i = c->next - 1; i >= oldest; i--)
        if (c->ring[i % FS_CATCH_RING].pid == pid) {
            *out = c->ring[i % FS_CATCH_RING];
            found = 1;
            break;
        }
    pthread_mutex_unlock(&c->lock);
    return found;
}

/* End the thread and free everything it held. */
void fs_catcher_stop(struct fs_catcher *c)
{
    int i;

    if (write(c->wake[1], "x", 1) != 1)
        return;                     /* cannot happen on an empty pipe; leak rather than hang */
    pthread_join(c->thread, NULL);
    for (i = 0; i < c->n_born; i++) {
        close(c->born[i].stat_fd);
        close(c->born[i].cmd_fd);
    }
    close(c->counter_fd);
    close(c->notify_fd);
    close(c->wake[0]);
    close(c->wake[1]);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* A non-blocking, close-on-exec inotify fd. */
int fs_inotify_init(void)
{
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);

    return fd < 0 ? -errno : fd;
}

/* Watch `path` for the events in `mask`; returns the watch descriptor. */
int fs_inotify_add(int fd, const char *path, unsigned int mask)
{
    int wd = inotify_add_watch(fd, path, mask);

    return wd < 0 ? -errno : wd;
}

/* "socket:[12345]" (len bytes, no NUL) -> 12345; any other link -> 0. */
static uint64_t fs_socket_inode(const char *link, long len)
{
    uint64_t value = 0;
    long i;

    if (len < 10 || memcmp(link, "socket:[", 8) != 0 || link[len - 1] != ']')
        return 0;
    for (i = 8; i < len - 1; i++) {
        uint64_t digit = (uint64_t)(link[i] - '0');

        if (link[i] < '0' || link[i] > '9' || value > (UINT64_MAX - digit) / 10)
            return 0;           /* not a 64-bit inode number */
        value = value * 10 + digit;
    }
    return value;
}

/*
 * Read link `name` of dir_fd; store its socket inode, if any.  -> 1 if it
 * exists, 0 if not (a gap, or closed meanwhile), -errno when the kernel
 * refuses it (EACCES, EPERM: ownership is then unknown, not "none").
 */
static int fs_note_link(int dir_fd, const char *name, uint64_t *out, int cap, int *count)
{
    char link[64];
    long len = readlinkat(dir_fd, name, link, sizeof(link));
    uint64_t inode;

    if (len < 0)
        return (errno == EACCES || errno == EPERM) ? -errno : 0;
    if (len == (long)sizeof(link))
        return 1;               /* cut short: longer than any socket link */
    inode = fs_socket_inode(link, len);
    if (inode != 0) {
        if (*count < cap)
            out[*count] = inode;
        (*count)++;
    }
    return 1;
}

/*
 * The socket inodes among the links of dir_fd, an open /proc/PID/fd (or any
 * directory of symlinks: a --proc tree).  The same walk as netsnoop.py's
 * fd_socket_inodes(): on Linux 6.2+ fstat() of the directory counts the open
 * fds, so while they are dense the names 0, 1, 2... are read without listing
 * the directory; past too many gaps, or with no count, getdents64 gives the
 * rest.  Writes at most `cap` inodes to `out` and returns how many there are
 * (more than `cap`: retry with a larger array), or -errno (-EACCES when
 * a link is refused).
 */
int fs_socket_inodes(int dir_fd, uint64_t *out, int cap)
{
    static __thread uint64_t buf[4096];
    char *bytes = (char *)buf;
    char name[24];
    struct stat st;
    long expect, gaps_left, found = 0;
    int fd, count = 0;

    if (fstat(dir_fd, &st) < 0)
        return -errno;
    expect = (long)st.st_size;
    gaps_left = 64 + expect / 8;
    for (fd = 0; found < expect && gaps_left > 0 && fd < INT_MAX; fd++) {
        int got;

        snprintf(name, sizeof(name), "%d", fd);
        got = fs_note_link(dir_fd, name, out, cap, &count);
        if (got < 0)
            return got;
        if (got)
            found++;
        else
            gaps_left--;
    }
    if (found >= expect && expect > 0)
        return count;
    if (lseek(dir_fd, 0, SEEK_SET) < 0)
        return -errno;
    for (;;) {
        long got = syscall(SYS_getdents64, dir_fd, buf, sizeof(buf));
        long off;

        if (got < 0)
            return -errno;
        if (got == 0)
            break;
        for (off = 0; off < got;) {
            struct fs_dirent64 *d = (struct fs_dirent64 *)(bytes + off);
            int number;

            off += d->d_reclen;
            if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
                continue;
            number = fs_parse_pid(d->d_name);
            /* read above already: the names "0" .. "fd - 1" exactly */
            if (number >= 0 && number < fd && (d->d_name[0] != '0' || d->d_name[1] == '\0'))
                continue;
            number = fs_note_link(dir_fd, d->d_name, out, cap, &count);
            if (number < 0)
                return number;
        }
    }
    return count;
}

/*
 * The tcp tab's --json rows straight from a sock_diag dump (netsnoop.py's
 * parse_diag_rows() and SocketRows.json_text() are the Python twin, and the
 * tests hold the two to the same bytes on real dumps).  At 20,000 sockets
 * the Python parse and the rows' text cost ~130 ms of a lone snapshot that
 * `ss -tanp` does whole in less; here they cost a few.
 *
 *   fs_diag_parse()  one chunk of a dump's reply -> rows (struct fs_diag_row);
 *   fs_diag_json()   the rows -> the JSON array, with each row's owner (the
 *                    lowest pid holding its inode, and how many hold it) and
 *                    its TCP bytes.
 */

#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>

/* One socket of a dump, as the tcp tab shows it. */
struct fs_diag_row {
    uint8_t family, state, timer, retrans;
    uint16_t sport, dport;              /* host order */
    uint8_t src[16], dst[16];
    uint32_t expires, rqueue, wqueue, uid, inode;
    int has_bytes;                      /* tcp_info was there */
    uint64_t bytes_acked, bytes_received;
};

#define FS_TCP_INFO_BYTES_AT 120        /* tcp_info: bytes_acked, then bytes_received */

/* tcp_info's two byte counters; what an older kernel's shorter struct lacks reads 0. */
static void fs_tcp_info_bytes(const uint8_t *info, size_t len, struct fs_diag_row *row)
{
    uint8_t padded[FS_TCP_INFO_BYTES_AT + 16] = {0};

    memcpy(padded, info, len < sizeof(padded) ? len : sizeof(padded));
    memcpy(&row->bytes_acked, padded + FS_TCP_INFO_BYTES_AT, 8);
    memcpy(&row->bytes_received, padded + FS_TCP_INFO_BYTES_AT + 8, 8);
    row->has_bytes = 1;
}

static void fs_diag_row_of(const struct inet_diag_msg *msg, const uint8_t *attrs,
                           size_t attrs_len, struct fs_diag_row *row)
{
    size_t at = 0;

    memset(row, 0, sizeof(*row));
    row->family = msg->idiag_family;
    row->state = msg->idiag_state;
    row->timer = msg->idiag_timer;
    row->retrans = msg->idiag_retrans;
    row->sport = ntohs(msg->id.idiag_sport);
    row->dport = ntohs(msg->id.idiag_dport);
    memcpy(row->src, msg->id.idiag_src, 16);
    memcpy(row->dst, msg->id.idiag_dst, 16);
    row->expires = msg->idiag_expires;
    row->rqueue = msg->idiag_rqueue;
    row->wqueue = msg->idiag_wqueue;
    row->uid = msg->idiag_uid;
    row->inode = msg->idiag_inode;
    if (row->inode == 0)
        return;                 /* bytes are keyed by inode: none without one */
    while (at + sizeof(struct nlattr) <= attrs_len) {
        struct nlattr attr;

        memcpy(&attr, attrs + at, sizeof(attr));
        if (attr.nla_len < sizeof(attr) || at + attr.nla_len > attrs_len)
            break;
        if ((attr.nla_type & NLA_TYPE_MASK) == INET_DIAG_INFO) {
            fs_tcp_info_bytes(attrs + at + sizeof(attr), attr.nla_len - sizeof(attr), row);
            break;
        }
        at += NLMSG_ALIGN(attr.nla_len);
    }
}

/*
 * Parse one chunk of a dump's reply: the messages of request `seq` become
 * rows appended at out[*count] (room for len / 88 more rows is enough: no
 * row's message is shorter).  A message too short is counted in *skipped.
 * -> 1 when the dump ended in this chunk (NLMSG_DONE, or an error: its errno
 * in *err), 0 when more chunks follow, -ENOSPC when out is full.
 */
int fs_diag_parse(const uint8_t *data, long len, uint32_t seq, struct fs_diag_row *out,
                  int cap, int *count, int *err, int *skipped)
{
    const size_t row_len = NLMSG_HDRLEN + sizeof(struct inet_diag_msg);
    long at = 0;

    *err = 0;
    while (at + (long)sizeof(struct nlmsghdr) <= len) {
        struct nlmsghdr head;
        struct inet_diag_msg msg;

        memcpy(&head, data + at, sizeof(head));
        if (head.nlmsg_len < sizeof(head) || at + (long)head.nlmsg_len > len)
            break;
        if (head.nlmsg_seq == seq) {
            if (head.nlmsg_type == NLMSG_DONE)
                return 1;
            if (head.nlmsg_type == NLMSG_ERROR) {
                int code = -EIO;

                if (head.nlmsg_len >= NLMSG_HDRLEN + sizeof(int))
                    memcpy(&code, data + at + NLMSG_HDRLEN, sizeof(code));
                *err = -code;
                return 1;
            }
            if (head.nlmsg_type == SOCK_DIAG_BY_FAMILY && head.nlmsg_len < row_len) {
                (*skipped)++;
            } else if (head.nlmsg_type == SOCK_DIAG_BY_FAMILY) {
                size_t attrs_at = NLMSG_ALIGN(row_len);

                if (*count >= cap)
                    return -ENOSPC;
                memcpy(&msg, data + at + NLMSG_HDRLEN, sizeof(msg));
                fs_diag_row_of(&msg, data + at + attrs_at,
                               head.nlmsg_len > attrs_at ? head.nlmsg_len - attrs_at : 0,
                               &out[(*count)++]);
            }
        }
        at += NLMSG_ALIGN(head.nlmsg_len);
    }
    return 0;
}

/* A text being written into a buffer the caller sized (fs_diag_json_bound()). */
struct fs_text {
    char *at;
};

static void fs_put(struct fs_text *t, const char *s)
{
    size_t n = strlen(s);

    memcpy(t->at, s, n);
    t->at += n;
}

static void fs_put_u64(struct fs_text *t, uint64_t value)
{
    char digits[24];
    int n = 0;

    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n)
        *t->at++ = digits[--n];
}

static void fs_put_address(struct fs_text *t, int family, const uint8_t *raw)
{
    char text[INET6_ADDRSTRLEN];

    /* as netsnoop.py's _diag_address: anything but AF_INET6 is read as IPv4 */
    inet_ntop(family == AF_INET6 ? AF_INET6 : AF_INET, raw, text, sizeof(text));
    fs_put(t, text);
}

static const char *const fs_tcp_states[] = {
    NULL, "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
    "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV",
    "BOUND_INACTIVE",
};

static void fs_put_state(struct fs_text *t, int state)
{
    char text[16];

    if (state > 0 && state < (int)(sizeof(fs_tcp_states) / sizeof(fs_tcp_states[0]))) {
        fs_put(t, fs_tcp_states[state]);
        return;
    }
    snprintf(text, sizeof(text), "UNKNOWN_%02X", state);
    fs_put(t, text);
}

/* The longest row fs_diag_json() writes, given the longest comm text. */
long fs_diag_json_bound(int rows, int comm_len)
{
    /* keys and punctuation < 400, two addresses < 2 * 46, numbers < 16 * 20 */
    return 2 + (long)rows * (400 + 92 + 320 + 2 + comm_len);
}

/* A socket inode held by a process; comm: the index of its comm's JSON text. */
struct fs_holder {
    uint64_t inode;
    int pid, comm;
};

static int fs_holder_order(const void *a, const void *b)
{
    const struct fs_holder *x = a, *y = b;

    if (x->inode != y->inode)
        return x->inode < y->inode ? -1 : 1;
    return (x->pid > y->pid) - (x->pid < y->pid);
}

/* The first holder of inode in the sorted array, or -1. */
static long fs_find_holder(const struct fs_holder *holders, long n, uint64_t inode)
{
    long low = 0, high = n;

    while (low < high) {
        long mid = low + (high - low) / 2;

        if (holders[mid].inode < inode)
            low = mid + 1;
        else
            high = mid;
    }
    return low < n && holders[low].inode == inode ? low : -1;
}

static void fs_put_owner(struct fs_text *t, const struct fs_holder *holders, long n,
                         uint64_t inode, int own_pid, const char *comms, const int *comm_at)
{
    long first = inode ? fs_find_holder(holders, n, inode) : -1;
    long end = first;
    int owned = 0;

    if (first < 0) {
        fs_put(t, "\"owned\": false, \"pid\": null, \"process\": null, \"holders\": null");
        return;
    }
    while (end < n && holders[end].inode == inode) {
        owned |= holders[end].pid == own_pid;
        end++;
    }
    fs_put(t, owned ? "\"owned\": true, \"pid\": " : "\"owned\": false, \"pid\": ");
    fs_put_u64(t, (uint64_t)holders[first].pid);
    fs_put(t, ", \"process\": ");
    fs_put(t, comms + comm_at[holders[first].comm]);
    fs_put(t, ", \"holders\": ");
    fs_put_u64(t, (uint64_t)(end - first));
}

static void fs_put_row(struct fs_text *t, const struct fs_diag_row *r,
                       const struct fs_holder *holders, long n_holders, int own_pid,
                       const char *comms, const int *comm_at)
{
    /* keepalive and zero-window probe timers: the counter is probes_out (timeout) */
    int probes = r->timer == 2 || r->timer == 4;

    fs_put(t, r->family == AF_INET6 ? "{\"proto\": \"tcp6\", \"local_address\": \""
                                    : "{\"proto\": \"tcp\", \"local_address\": \"");
    fs_put_address(t, r->family, r->src);
    fs_put(t, "\", \"local_port\": ");
    fs_put_u64(t, r->sport);
    fs_put(t, ", \"remote_address\": \"");
    fs_put_address(t, r->family, r->dst);
    fs_put(t, "\", \"remote_port\": ");
    fs_put_u64(t, r->dport);
    fs_put(t, ", \"state\": \"");
    fs_put_state(t, r->state);
    fs_put(t, "\", \"tx_queue\": ");
    fs_put_u64(t, r->state == 0x0A ? 0 : r->wqueue);      /* a listener's is its backlog */
    fs_put(t, ", \"rx_queue\": ");
    fs_put_u64(t, r->rqueue);
    fs_put(t, ", \"timer_active\": ");
    fs_put_u64(t, r->timer);
    fs_put(t, ", \"timer_when\": ");
    fs_put_u64(t, r->expires / 10);                     /* ms -> clock ticks */
    fs_put(t, ", \"retransmits\": ");
    fs_put_u64(t, probes ? 0 : r->retrans);
    fs_put(t, ", \"uid\": ");
    fs_put_u64(t, r->uid);
    fs_put(t, ", \"timeout\": ");
    fs_put_u64(t, probes ? r->retrans : 0);
    fs_put(t, ", \"inode\": ");
    fs_put_u64(t, r->inode);
    fs_put(t, ", \"drops\": null, ");
    fs_put_owner(t, holders, n_holders, r->inode, own_pid, comms, comm_at);
    if (r->has_bytes) {
        fs_put(t, ", \"bytes_sent\": ");
        fs_put_u64(t, r->bytes_acked);
        fs_put(t, ", \"bytes_received\": ");
        fs_put_u64(t, r->bytes_received);
        fs_put(t, "}");
    } else {
        fs_put(t, ", \"bytes_sent\": null, \"bytes_received\": null}");
    }
}

/*
 * The rows as the JSON array json.dumps would write for them, into out (sized
 * by fs_diag_json_bound()).  The holders: process g (pid pids[g]) holds the
 * socket inodes inodes[ends[g - 1] .. ends[g]), its comm's JSON text is at
 * comms + comm_at[g] (NUL-terminated); own_pid's holdings are "owned".  ->
 * the length written, or -ENOMEM.
 */
long fs_diag_json(const struct fs_diag_row *rows, int n_rows, const uint64_t *inodes,
                  const int *ends, const int *pids, int n_pids, const char *comms,
                  const int *comm_at, int own_pid, char *out)
{
    struct fs_text t = {out};
    long n_holders = n_pids ? ends[n_pids - 1] : 0;
    struct fs_holder *holders = malloc(sizeof(*holders) * (n_holders ? n_holders : 1));
    long i = 0;
    int g, r;

    if (holders == NULL)
        return -ENOMEM;
    for (g = 0; g < n_pids; g++) {
        for (; i < ends[g]; i++) {
            holders[i].inode = inodes[i];
            holders[i].pid = pids[g];
            holders[i].comm = g;
        }
    }
    qsort(holders, n_holders, sizeof(*holders), fs_holder_order);
    fs_put(&t, "[");
    for (r = 0; r < n_rows; r++) {
        if (r)
            fs_put(&t, ", ");
        fs_put_row(&t, &rows[r], holders, n_holders, own_pid, comms, comm_at);
    }
    fs_put(&t, "]");
    free(holders);
    return t.at - out;
}
