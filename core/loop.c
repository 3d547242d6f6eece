/*
 * core/loop.c - the io_uring event loop (see loop.h for the API and the
 * callback contract).
 *
 * Shape (after liburing examples/proxy.c and redis ae.c):
 *  - every submitted request carries user_data = object pointer | op type
 *    (objects are at least 16-byte aligned, so the low 4 bits are free);
 *    loop__handle_cqe() has the one switch on the op type;
 *  - loop_run() submits and waits in one io_uring_enter, dispatches every
 *    CQE of the batch, advances the CQ once, then runs expired timers;
 *  - an object is freed only from the completion of its own close request,
 *    which is submitted once every other request of the object completed.
 *    So a CQE never points at freed memory; what a handler must re-check is
 *    the *state* (an earlier callback in the batch may have closed it);
 *  - sockets, the signalfd and the eventfd are left in blocking mode on
 *    purpose: io_uring never blocks the thread (it arms an internal poll),
 *    while O_NONBLOCK would make some kernels complete reads with -EAGAIN
 *    instead of waiting.  No read(2)/write(2)/connect(2) is ever called on
 *    them from the loop thread.
 */
#include "loop.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ internals */

/* The op type in the low bits of user_data. */
enum loop__op {
    LOOP__OP_IGNORE = 0,      /* cancel and fire-and-forget requests */
    LOOP__OP_ACCEPT,          /* listener: (multishot) accept */
    LOOP__OP_LISTENER_CLOSE,  /* listener: close of the listening fd */
    LOOP__OP_RECV,            /* conn: (multishot) recv */
    LOOP__OP_SEND,            /* conn: sendmsg of the write queue head */
    LOOP__OP_CONNECT,         /* conn: connect */
    LOOP__OP_CONNECT_TIMEOUT, /* conn: the linked timeout of a connect */
    LOOP__OP_CLOSE,           /* conn: close of the fd, the last request */
    LOOP__OP_SIGNAL,          /* loop: read of the signalfd */
    LOOP__OP_WAKE,            /* loop: read of the wake eventfd */
    LOOP__OP_POLL,            /* watch: one-shot poll of a foreign fd */
    LOOP__OP_RESUME,          /* conn: NOP that delivers stashed reads after read_start */
};
#define LOOP__OP_MASK 0xfu
static_assert(alignof(max_align_t) >= 16, "user_data packs the op in 4 low pointer bits");

#define LOOP__IOV_MAX 64 /* iovecs per sendmsg: several queued writes per syscall */
#define LOOP__BGID 7     /* provided buffer group id of the loop's buffer ring */
#define LOOP__ACCEPT_RETRY_NS (10u * 1000u * 1000u) /* back-off after EMFILE & co */

typedef enum { LOOP__L_LISTENING = 1, LOOP__L_CLOSING } loop__lstate_t;

/* One queued write.  iov[] is a copy of the caller's array; the bytes are the
 * caller's (loop_conn_write) or follow iov[] in the same allocation
 * (loop_conn_write_copy).  Invariant: idx <= iovcnt, off < iov[idx].iov_len. */
typedef struct loop__wreq {
    struct loop__wreq *next;
    loop_write_cb cb; /* NULL for loop_conn_write_copy */
    void *arg;
    int iovcnt;
    int idx;    /* first iovec not completely sent */
    size_t off; /* bytes of iov[idx] already sent */
    struct iovec iov[];
} loop__wreq_t;

struct st_loop_conn_t {
    loop_t *loop;
    int fd;
    loop_conn_state_t state;
    unsigned inflight;   /* requests submitted whose final CQE has not arrived */
    bool reading;        /* loop_conn_read_start() called, no EOF/error yet */
    bool recv_armed;     /* a recv request is in flight */
    bool send_armed;     /* a sendmsg request is in flight */
    bool connect_armed;  /* a connect request is in flight */
    bool multishot;      /* recv uses multishot + buffer ring */
    bool close_submitted;
    bool read_paused;    /* loop_conn_read_stop(): received bytes go to the stash */
    bool recv_cancel;    /* a cancel of the multishot recv is pending */
    bool resume_armed;   /* a LOOP__OP_RESUME NOP is in flight */
    bool stash_end;      /* the stash ends with EOF/error stash_res */
    int stash_res;       /* 0 (EOF) or -errno, valid when stash_end */
    uint8_t *stash;      /* bytes received after read_stop, delivered on resume */
    size_t stash_len, stash_cap;
    size_t send_cap;     /* max bytes per sendmsg, 0 = no cap (see loop__on_send) */
    int werr;            /* first write error (-errno), 0 if none */
    loop_read_cb read_cb;
    loop_connect_cb connect_cb;
    loop_close_cb close_cb;
    void *data;
    uint8_t *rbuf;       /* fallback recv buffer, loop->opts.recv_buf_size bytes */
    loop__wreq_t *wq_head, **wq_tail;
    size_t queued;       /* bytes queued, not yet sent */
    size_t sending;      /* bytes in the in-flight sendmsg */
    struct msghdr msg;   /* in-flight sendmsg: stable until its CQE */
    struct iovec siov[LOOP__IOV_MAX];
    struct __kernel_timespec cto; /* connect timeout, stable until submitted */
    struct sockaddr_storage peer; /* connect address, stable until the CQE */
    struct st_loop_conn_t *prev, *next; /* loop->conns */
};

struct st_loop_listener_t {
    loop_t *loop;
    int fd;
    loop__lstate_t state;
    unsigned inflight;
    bool armed;     /* an accept request is in flight */
    bool multishot; /* the accept in flight (or the next one) is multishot */
    loop_accept_cb cb;
    void *arg;
    uint16_t port;
    loop_timer_t retry; /* re-arms accept after EMFILE/ENFILE/ENOMEM */
    struct st_loop_listener_t *prev, *next;
};

typedef struct {
    loop_hook_cb cb; /* NULL: removed, compacted after the hook phase */
    void *arg;
} loop__hook_t;

struct st_loop_t {
    struct io_uring ring;
    loop_options_t opts;
    unsigned features; /* LOOP_F_* */
    pthread_t owner;   /* the creating thread; loop_stop() from others wakes */
    atomic_bool stop;
    int result; /* what loop_run() returns */

    int wake_fd;
    uint64_t wake_val; /* eventfd read target */

    int sig_fd; /* -1 until loop_signal() */
    bool sig_masked;
    sigset_t sig_set;      /* signals routed to the signalfd */
    sigset_t sig_oldmask;  /* thread mask before the first loop_signal() */
    struct signalfd_siginfo siginfo; /* signalfd read target */
    struct {
        loop_signal_cb cb;
        void *arg;
    } sigs[_NSIG];

    /* Provided buffer ring: buf_count buffers of buf_size bytes in bufs. */
    struct io_uring_buf_ring *br;
    size_t br_bytes;
    uint8_t *bufs;
    int br_mask;

    /* Timers: binary min-heap on (deadline, seq). */
    loop_timer_t **heap;
    uint32_t heap_len, heap_cap;
    uint64_t timer_seq;
    bool skipped_enter; /* the previous iteration ran without io_uring_enter */

    loop__hook_t *hooks;
    unsigned nhooks, cap_hooks;
    bool hooks_dirty;

    loop_conn_t *conns;
    loop_listener_t *listeners;
    loop_counters_t ctr;

    bool shutting_down;
    loop_timer_t shutdown_timer;

    struct st_loop_watch_t *watches; /* fd readiness watches (loop_watch_*) */
};

/* Out-of-memory and broken-invariant policy: API calls return -ENOMEM; an
 * impossible state is a loud abort with file:line (STYLE.md). */
#define loop__fatal(msg) loop__fatal_at(__FILE__, __LINE__, (msg))
__attribute__((noreturn)) static void loop__fatal_at(const char *file, int line, const char *msg)
{
    fprintf(stderr, "loop: fatal: %s:%d: %s\n", file, line, msg);
    abort();
}

/* The module's one allocator pair. */
static void *loop__alloc(size_t n)
{
    return calloc(1, n);
}

static void loop__free(void *p)
{
    free(p);
}

static inline uint64_t loop__ud(const void *obj, enum loop__op op)
{
    return (uint64_t)(uintptr_t)obj | (uint64_t)op;
}

/* An SQE; when the SQ is full, submit first.  Never NULL after a submit
 * unless the ring is broken. */
static struct io_uring_sqe *loop__sqe(loop_t *loop)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&loop->ring);
    if (sqe == NULL) {
        io_uring_submit(&loop->ring);
        sqe = io_uring_get_sqe(&loop->ring);
        if (sqe == NULL)
            loop__fatal("io_uring_get_sqe: SQ full after submit");
    }
    return sqe;
}

static void loop__cancel(loop_t *loop, uint64_t ud)
{
    struct io_uring_sqe *sqe = loop__sqe(loop);
    io_uring_prep_cancel64(sqe, ud, 0);
    io_uring_sqe_set_data64(sqe, loop__ud(NULL, LOOP__OP_IGNORE));
}

uint64_t loop_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* --------------------------------------------------------------- timers */
/*
 * A binary min-heap keyed on (deadline, start sequence): start, stop and
 * fire are O(log n), the nearest deadline is O(1).  Chosen over a timer
 * wheel because loops hold few timers (connect/idle/shutdown deadlines,
 * flush ticks) with widely spread deadlines, and a heap needs no tick
 * granularity: a timer fires at its ns deadline, not the next tick.  Each
 * timer stores its heap index, so stop needs no search.
 */

static inline bool loop__t_less(const loop_timer_t *a, const loop_timer_t *b)
{
    return a->_deadline < b->_deadline || (a->_deadline == b->_deadline && a->_seq < b->_seq);
}

static void loop__heap_set(loop_t *loop, uint32_t i, loop_timer_t *t)
{
    loop->heap[i] = t;
    t->_idx = i;
}

static void loop__heap_up(loop_t *loop, uint32_t i)
{
    loop_timer_t *t = loop->heap[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!loop__t_less(t, loop->heap[p]))
            break;
        loop__heap_set(loop, i, loop->heap[p]);
        i = p;
    }
    loop__heap_set(loop, i, t);
}

static void loop__heap_down(loop_t *loop, uint32_t i)
{
    loop_timer_t *t = loop->heap[i];
    for (;;) {
        uint32_t l = 2 * i + 1, m = i;
        const loop_timer_t *best = t;
        if (l < loop->heap_len && loop__t_less(loop->heap[l], best)) {
            m = l;
            best = loop->heap[l];
        }
        if (l + 1 < loop->heap_len && loop__t_less(loop->heap[l + 1], best))
            m = l + 1;
        if (m == i)
            break;
        loop__heap_set(loop, i, loop->heap[m]);
        i = m;
    }
    loop__heap_set(loop, i, t);
}

static void loop__heap_remove(loop_t *loop, loop_timer_t *t)
{
    uint32_t i = t->_idx;
    if (i >= loop->heap_len || loop->heap[i] != t)
        loop__fatal("timer heap: stopping a timer that is not in this loop's heap");
    t->_idx = UINT32_MAX;
    loop_timer_t *last = loop->heap[--loop->heap_len];
    if (last == t)
        return;
    loop__heap_set(loop, i, last);
    loop__heap_up(loop, i);
    loop__heap_down(loop, last->_idx);
}

static int loop__heap_push(loop_t *loop, loop_timer_t *t)
{
    if (loop->heap_len == loop->heap_cap) {
        uint32_t cap = loop->heap_cap ? loop->heap_cap * 2 : 16;
        loop_timer_t **h = realloc(loop->heap, cap * sizeof *h);
        if (h == NULL)
            return -ENOMEM;
        loop->heap = h;
        loop->heap_cap = cap;
    }
    loop->heap[loop->heap_len] = t;
    t->_idx = loop->heap_len++;
    loop__heap_up(loop, t->_idx);
    return 0;
}

void loop_timer_init(loop_timer_t *t)
{
    memset(t, 0, sizeof *t);
    t->_idx = UINT32_MAX;
}

bool loop_timer_active(const loop_timer_t *t)
{
    return t->_idx != UINT32_MAX;
}

int loop_timer_start(loop_t *loop, loop_timer_t *t, uint64_t delay_ns, uint64_t repeat_ns,
                     loop_timer_cb cb, void *arg)
{
    if (loop_timer_active(t))
        loop__heap_remove(loop, t);
    t->_deadline = loop_now_ns() + delay_ns;
    t->_repeat = repeat_ns;
    t->_seq = loop->timer_seq++;
    t->_cb = cb;
    t->_arg = arg;
    return loop__heap_push(loop, t);
}

void loop_timer_stop(loop_t *loop, loop_timer_t *t)
{
    if (loop_timer_active(t))
        loop__heap_remove(loop, t);
}

/* Fires expired timers.  Only timers started before this phase began fire
 * (seq < limit), so a callback re-arming with delay 0 cannot spin here. */
static void loop__run_timers(loop_t *loop)
{
    uint64_t now = loop_now_ns();
    uint64_t limit = loop->timer_seq;
    while (loop->heap_len > 0) {
        loop_timer_t *t = loop->heap[0];
        if (t->_deadline > now || t->_seq >= limit)
            break;
        loop__heap_remove(loop, t);
        if (t->_repeat > 0) {
            /* Keep the period; after a stall skip missed ticks instead of
             * firing them back to back. */
            t->_deadline += t->_repeat;
            if (t->_deadline <= now)
                t->_deadline = now + t->_repeat;
            t->_seq = loop->timer_seq++;
            if (loop__heap_push(loop, t) != 0) /* cannot grow: we just removed one */
                loop__fatal("timer heap push after remove");
        }
        t->_cb(loop, t, t->_arg);
    }
}

/* ---------------------------------------------------------------- hooks */

int loop_hook_add(loop_t *loop, loop_hook_cb cb, void *arg)
{
    if (loop->nhooks == loop->cap_hooks) {
        unsigned cap = loop->cap_hooks ? loop->cap_hooks * 2 : 4;
        loop__hook_t *h = realloc(loop->hooks, cap * sizeof *h);
        if (h == NULL)
            return -ENOMEM;
        loop->hooks = h;
        loop->cap_hooks = cap;
    }
    loop->hooks[loop->nhooks++] = (loop__hook_t){cb, arg};
    return 0;
}

void loop_hook_remove(loop_t *loop, loop_hook_cb cb, void *arg)
{
    for (unsigned i = 0; i < loop->nhooks; i++) {
        if (loop->hooks[i].cb == cb && loop->hooks[i].arg == arg) {
            loop->hooks[i].cb = NULL; /* compacted after the hook phase */
            loop->hooks_dirty = true;
            return;
        }
    }
}

static void loop__run_hooks(loop_t *loop)
{
    /* nhooks may grow during the phase; new hooks run from the next one. */
    unsigned n = loop->nhooks;
    for (unsigned i = 0; i < n; i++)
        if (loop->hooks[i].cb != NULL)
            loop->hooks[i].cb(loop, loop->hooks[i].arg);
    if (loop->hooks_dirty) {
        unsigned j = 0;
        for (unsigned i = 0; i < loop->nhooks; i++)
            if (loop->hooks[i].cb != NULL)
                loop->hooks[j++] = loop->hooks[i];
        loop->nhooks = j;
        loop->hooks_dirty = false;
    }
}

/* -------------------------------------------------------- wake, signals */

static void loop__arm_wake(loop_t *loop)
{
    struct io_uring_sqe *sqe = loop__sqe(loop);
    io_uring_prep_read(sqe, loop->wake_fd, &loop->wake_val, sizeof loop->wake_val, 0);
    io_uring_sqe_set_data64(sqe, loop__ud(loop, LOOP__OP_WAKE));
}

void loop_wake(loop_t *loop)
{
    uint64_t one = 1;
    /* Fails only if the counter would overflow (2^64-2 pending wake-ups). */
    ssize_t r = write(loop->wake_fd, &one, sizeof one);
    (void)r;
}

void loop_stop(loop_t *loop)
{
    atomic_store_explicit(&loop->stop, true, memory_order_release);
    if (!pthread_equal(pthread_self(), loop->owner))
        loop_wake(loop);
}

static void loop__on_wake(loop_t *loop, int res)
{
    if (res < 0 && res != -EINTR && res != -EAGAIN && res != -ECANCELED) {
        fprintf(stderr, "loop: read(eventfd): %s\n", strerror(-res));
        return; /* not re-armed: the fd is broken */
    }
    if (res == -ECANCELED)
        return;
    loop__arm_wake(loop);
    if (loop->opts.on_wake != NULL)
        loop->opts.on_wake(loop, loop->opts.wake_arg);
}

static void loop__arm_signal(loop_t *loop)
{
    struct io_uring_sqe *sqe = loop__sqe(loop);
    io_uring_prep_read(sqe, loop->sig_fd, &loop->siginfo, sizeof loop->siginfo, 0);
    io_uring_sqe_set_data64(sqe, loop__ud(loop, LOOP__OP_SIGNAL));
}

int loop_signal(loop_t *loop, int signo, loop_signal_cb cb, void *arg)
{
    if (signo <= 0 || signo >= _NSIG || signo == SIGKILL || signo == SIGSTOP)
        return -EINVAL;
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, signo);
    if (cb == NULL) {
        loop->sigs[signo].cb = NULL;
        sigdelset(&loop->sig_set, signo);
        if (loop->sig_fd >= 0)
            signalfd(loop->sig_fd, &loop->sig_set, SFD_CLOEXEC);
        if (loop->sig_masked && !sigismember(&loop->sig_oldmask, signo))
            pthread_sigmask(SIG_UNBLOCK, &one, NULL);
        return 0;
    }
    sigset_t next = loop->sig_set;
    sigaddset(&next, signo);
    /* Blocking mode on purpose, see the file comment. */
    int fd = signalfd(loop->sig_fd, &next, SFD_CLOEXEC);
    if (fd < 0) {
        int e = -errno;
        perror("signalfd");
        return e;
    }
    pthread_sigmask(SIG_BLOCK, &one, loop->sig_masked ? NULL : &loop->sig_oldmask);
    loop->sig_masked = true;
    loop->sig_set = next;
    loop->sigs[signo].cb = cb;
    loop->sigs[signo].arg = arg;
    if (loop->sig_fd < 0) {
        loop->sig_fd = fd;
        loop__arm_signal(loop);
    }
    return 0;
}

static void loop__on_signal(loop_t *loop, int res)
{
    if (res == -ECANCELED)
        return;
    if (res == (int)sizeof loop->siginfo) {
        int signo = (int)loop->siginfo.ssi_signo;
        loop__arm_signal(loop);
        if (signo > 0 && signo < _NSIG && loop->sigs[signo].cb != NULL)
            loop->sigs[signo].cb(loop, signo, loop->sigs[signo].arg);
        return;
    }
    if (res == -EINTR || res == -EAGAIN) {
        loop__arm_signal(loop);
        return;
    }
    fprintf(stderr, "loop: read(signalfd): unexpected result %d\n", res);
}

/* ---------------------------------------------------- provided buffers */

static int loop__setup_buf_ring(loop_t *loop)
{
    unsigned n = loop->opts.buf_count;
    loop->br_bytes = n * sizeof(struct io_uring_buf);
    void *mem = mmap(NULL, loop->br_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE,
                     -1, 0);
    if (mem == MAP_FAILED)
        return -errno;
    loop->br = mem;
    struct io_uring_buf_reg reg = {
        .ring_addr = (uint64_t)(uintptr_t)mem,
        .ring_entries = n,
        .bgid = LOOP__BGID,
    };
    /* liburing 2.3 has no io_uring_setup_buf_ring(): register our mapping. */
    int ret = io_uring_register_buf_ring(&loop->ring, &reg, 0);
    if (ret != 0)
        goto err;
    loop->bufs = malloc((size_t)n * loop->opts.buf_size);
    if (loop->bufs == NULL) {
        io_uring_unregister_buf_ring(&loop->ring, LOOP__BGID);
        ret = -ENOMEM;
        goto err;
    }
    io_uring_buf_ring_init(loop->br);
    loop->br_mask = io_uring_buf_ring_mask(n);
    for (unsigned i = 0; i < n; i++)
        io_uring_buf_ring_add(loop->br, loop->bufs + (size_t)i * loop->opts.buf_size,
                              loop->opts.buf_size, (unsigned short)i, loop->br_mask, (int)i);
    /* Release store of the tail: the kernel sees the entries written above. */
    io_uring_buf_ring_advance(loop->br, (int)n);
    return 0;
err:
    munmap(mem, loop->br_bytes);
    loop->br = NULL;
    return ret;
}

static void loop__buf_recycle(loop_t *loop, unsigned bid)
{
    io_uring_buf_ring_add(loop->br, loop->bufs + (size_t)bid * loop->opts.buf_size,
                          loop->opts.buf_size, (unsigned short)bid, loop->br_mask, 0);
    io_uring_buf_ring_advance(loop->br, 1);
}

/* ---------------------------------------------------------- create/run */

int loop_create(loop_t **out, const loop_options_t *opts)
{
    int ret;
    loop_t *loop = loop__alloc(sizeof *loop);
    if (loop == NULL)
        return -ENOMEM;
    if (opts != NULL)
        loop->opts = *opts;
    if (loop->opts.sq_entries == 0)
        loop->opts.sq_entries = 256;
    if (loop->opts.buf_count == 0)
        loop->opts.buf_count = 256;
    if (loop->opts.buf_size == 0)
        loop->opts.buf_size = 16384;
    if (loop->opts.recv_buf_size == 0)
        loop->opts.recv_buf_size = 16384;
    if ((loop->opts.buf_count & (loop->opts.buf_count - 1)) != 0 || loop->opts.buf_count > 32768) {
        loop__free(loop);
        return -EINVAL;
    }
    loop->owner = pthread_self();
    loop->wake_fd = -1;
    loop->sig_fd = -1;
    sigemptyset(&loop->sig_set);
    loop_timer_init(&loop->shutdown_timer);

    /* Probe the setup flags from the most to the least capable: kernels
     * before 6.1 refuse DEFER_TASKRUN, before 6.0 SINGLE_ISSUER, before 5.19
     * COOP_TASKRUN, each with -EINVAL.  Task work then runs only when we
     * enter the kernel to wait, not by interrupting the loop thread. */
    static const unsigned tries[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    ret = -EINVAL;
    for (size_t i = 0; i < sizeof tries / sizeof tries[0] && ret == -EINVAL; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        /* CQ 4x the SQ: multishot requests post many CQEs per SQE. */
        p.flags = tries[i] | IORING_SETUP_CQSIZE;
        p.cq_entries = loop->opts.sq_entries * 4;
        ret = io_uring_queue_init_params(loop->opts.sq_entries, &loop->ring, &p);
        if (ret == 0) {
            if (tries[i] & IORING_SETUP_SINGLE_ISSUER)
                loop->features |= LOOP_F_SINGLE_ISSUER;
            if (tries[i] & IORING_SETUP_DEFER_TASKRUN)
                loop->features |= LOOP_F_DEFER_TASKRUN;
            if (tries[i] & IORING_SETUP_COOP_TASKRUN)
                loop->features |= LOOP_F_COOP_TASKRUN;
            if (p.features & IORING_FEAT_EXT_ARG)
                loop->features |= LOOP_F_EXT_ARG;
            if (p.features & IORING_FEAT_NODROP)
                loop->features |= LOOP_F_NODROP;
        }
    }
    if (ret != 0) {
        fprintf(stderr, "loop: io_uring_queue_init_params: %s\n", strerror(-ret));
        loop__free(loop);
        return ret;
    }

    /* The opcodes we cannot do without (5.6+). */
    struct io_uring_probe *probe = io_uring_get_probe_ring(&loop->ring);
    static const int need[] = {IORING_OP_RECV, IORING_OP_SENDMSG, IORING_OP_ACCEPT,
                               IORING_OP_CONNECT, IORING_OP_CLOSE, IORING_OP_ASYNC_CANCEL,
                               IORING_OP_LINK_TIMEOUT, IORING_OP_READ};
    for (size_t i = 0; probe != NULL && i < sizeof need / sizeof need[0]; i++)
        if (!io_uring_opcode_supported(probe, need[i])) {
            fprintf(stderr, "loop: kernel io_uring lacks opcode %d\n", need[i]);
            ret = -ENOSYS;
        }
    if (probe != NULL)
        io_uring_free_probe(probe);
    else
        ret = -ENOSYS;
    if (ret != 0)
        goto err_ring;

    /* Buffer ring (5.19+) for multishot recv (6.0+).  Multishot accept and
     * recv have no feature bit: they are tried on first use and dropped
     * for the loop's lifetime when the kernel answers -EINVAL. */
    if (!loop->opts.force_fallback) {
        if (loop__setup_buf_ring(loop) == 0)
            loop->features |= LOOP_F_BUF_RING | LOOP_F_RECV_MULTISHOT;
        loop->features |= LOOP_F_ACCEPT_MULTISHOT;
    }

    loop->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (loop->wake_fd < 0) {
        ret = -errno;
        perror("eventfd");
        goto err_bufs;
    }
    loop__arm_wake(loop);
    *out = loop;
    return 0;

err_bufs:
    if (loop->br != NULL) {
        io_uring_unregister_buf_ring(&loop->ring, LOOP__BGID);
        munmap(loop->br, loop->br_bytes);
        free(loop->bufs);
    }
err_ring:
    io_uring_queue_exit(&loop->ring);
    loop__free(loop);
    return ret;
}

unsigned loop_features(const loop_t *loop)
{
    return loop->features;
}

void loop_counters(const loop_t *loop, loop_counters_t *out)
{
    *out = loop->ctr;
}

static void loop__handle_cqe(loop_t *loop, const struct io_uring_cqe *cqe);

int loop_run(loop_t *loop)
{
    loop->result = 0;
    while (!atomic_load_explicit(&loop->stop, memory_order_acquire)) {
        loop__run_hooks(loop);
        if (loop->shutting_down && loop->ctr.open == 0)
            break;
        if (atomic_load_explicit(&loop->stop, memory_order_acquire))
            break;

        struct __kernel_timespec ts, *tsp = NULL;
        bool due = false;
        if (loop->heap_len > 0) {
            uint64_t now = loop_now_ns(), dl = loop->heap[0]->_deadline;
            uint64_t d = dl > now ? dl - now : 0;
            ts.tv_sec = (long long)(d / 1000000000u);
            ts.tv_nsec = (long long)(d % 1000000000u);
            tsp = &ts;
            due = d == 0;
        }
        struct io_uring_cqe *cqe;
        int ret = 0;
        if (due && !loop->skipped_enter && io_uring_sq_ready(&loop->ring) == 0) {
            /* A timer is due now (a zero-delay timer: deferred callbacks)
             * and nothing waits for submission: a system call would return
             * at once, so run the timers without one.  Completions already
             * in the CQ are handled below; those the kernel still holds
             * (DEFER_TASKRUN posts them only inside io_uring_enter) wait
             * one iteration: never more, the next one enters. */
            loop->skipped_enter = true;
        } else {
            loop->skipped_enter = false;
            ret = io_uring_submit_and_wait_timeout(&loop->ring, &cqe, 1, tsp, NULL);
        }
        if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
            fprintf(stderr, "loop: io_uring_submit_and_wait_timeout: %s\n", strerror(-ret));
            loop->result = ret;
            break;
        }
        unsigned head, n = 0;
        io_uring_for_each_cqe(&loop->ring, head, cqe)
        {
            loop__handle_cqe(loop, cqe);
            n++;
        }
        /* One store-release of the CQ head per batch. */
        io_uring_cq_advance(&loop->ring, n);
        loop__run_timers(loop);
    }
    atomic_store_explicit(&loop->stop, false, memory_order_relaxed);
    loop_timer_stop(loop, &loop->shutdown_timer);
    /* Hand pending SQEs (closes, cancels) to the kernel before returning. */
    io_uring_submit(&loop->ring);
    return loop->result;
}

/* ---------------------------------------------------------- connections */

static loop_conn_t *loop__conn_new(loop_t *loop, int fd, loop_conn_state_t st, void *data)
{
    loop_conn_t *c = loop__alloc(sizeof *c);
    if (c == NULL)
        return NULL;
    c->loop = loop;
    c->fd = fd;
    c->state = st;
    c->data = data;
    c->wq_tail = &c->wq_head;
    c->multishot = (loop->features & LOOP_F_RECV_MULTISHOT) != 0;
    c->next = loop->conns;
    if (loop->conns != NULL)
        loop->conns->prev = c;
    loop->conns = c;
    loop->ctr.open++;
    return c;
}

static void loop__conn_free(loop_conn_t *c)
{
    loop_t *loop = c->loop;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        loop->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    loop->ctr.open--;
    loop__free(c->rbuf);
    loop__free(c->stash);
    loop__free(c);
}

static void loop__nodelay(int fd)
{
    int one = 1;
    /* Small RPC frames must not wait for Nagle; failure only costs latency. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Fails every queued write with status; callbacks may queue more (they
 * then fail too, since werr or the state refuses them). */
static void loop__fail_writes(loop_conn_t *c, int status)
{
    loop__wreq_t *w = c->wq_head;
    c->wq_head = NULL;
    c->wq_tail = &c->wq_head;
    c->queued = 0;
    while (w != NULL) {
        loop__wreq_t *next = w->next;
        if (w->cb != NULL)
            w->cb(c, status, w->arg);
        loop__free(w);
        w = next;
    }
}

/* Submits the close request once nothing else is in flight. */
static void loop__conn_maybe_close(loop_conn_t *c)
{
    if (c->state != LOOP_CONN_CLOSING || c->inflight != 0 || c->close_submitted)
        return;
    struct io_uring_sqe *sqe = loop__sqe(c->loop);
    io_uring_prep_close(sqe, c->fd);
    io_uring_sqe_set_data64(sqe, loop__ud(c, LOOP__OP_CLOSE));
    c->inflight++;
    c->close_submitted = true;
}

static void loop__arm_recv(loop_conn_t *c)
{
    struct io_uring_sqe *sqe = loop__sqe(c->loop);
    if (c->multishot) {
        io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = LOOP__BGID;
    } else {
        io_uring_prep_recv(sqe, c->fd, c->rbuf, c->loop->opts.recv_buf_size, 0);
    }
    io_uring_sqe_set_data64(sqe, loop__ud(c, LOOP__OP_RECV));
    c->recv_armed = true;
    c->inflight++;
}

static void loop__arm_send(loop_conn_t *c)
{
    int n = 0;
    size_t total = 0;
    size_t cap = c->send_cap != 0 ? c->send_cap : SIZE_MAX;
    for (loop__wreq_t *w = c->wq_head; w != NULL && n < LOOP__IOV_MAX && total < cap; w = w->next) {
        for (int i = w->idx; i < w->iovcnt && n < LOOP__IOV_MAX && total < cap; i++) {
            char *base = w->iov[i].iov_base;
            size_t len = w->iov[i].iov_len;
            if (i == w->idx) {
                base += w->off;
                len -= w->off;
            }
            if (len == 0)
                continue;
            if (len > cap - total)
                len = cap - total;
            c->siov[n].iov_base = base;
            c->siov[n].iov_len = len;
            n++;
            total += len;
        }
    }
    if (n == 0)
        loop__fatal("arm_send with an empty write queue");
    memset(&c->msg, 0, sizeof c->msg);
    c->msg.msg_iov = c->siov;
    c->msg.msg_iovlen = (size_t)n;
    struct io_uring_sqe *sqe = loop__sqe(c->loop);
    /* MSG_NOSIGNAL: a reset peer is an -EPIPE result, not a SIGPIPE. */
    io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, loop__ud(c, LOOP__OP_SEND));
    c->send_armed = true;
    c->sending = total;
    c->inflight++;
    c->loop->ctr.send_ops++;
}

int loop_conn_read_start(loop_conn_t *c, loop_read_cb cb)
{
    if (c->state != LOOP_CONN_OPEN)
        return -ENOTCONN;
    if (c->read_paused) {
        /* Resume.  Stashed bytes (and a stashed EOF/error) go first, from
         * a NOP completion: never from inside this call. */
        c->read_paused = false;
        c->read_cb = cb;
        c->reading = true;
        if (c->stash_len > 0 || c->stash_end) {
            if (!c->resume_armed) {
                struct io_uring_sqe *sqe = loop__sqe(c->loop);
                io_uring_prep_nop(sqe);
                io_uring_sqe_set_data64(sqe, loop__ud(c, LOOP__OP_RESUME));
                c->resume_armed = true;
                c->inflight++;
            }
        } else if (!c->recv_armed) {
            loop__arm_recv(c);
        }
        return 0;
    }
    if (c->reading || c->recv_armed)
        return -EALREADY;
    if (!c->multishot && c->rbuf == NULL) {
        c->rbuf = malloc(c->loop->opts.recv_buf_size);
        if (c->rbuf == NULL)
            return -ENOMEM;
    }
    c->read_cb = cb;
    c->reading = true;
    loop__arm_recv(c);
    return 0;
}

int loop_conn_read_stop(loop_conn_t *c)
{
    if (c->state != LOOP_CONN_OPEN)
        return -ENOTCONN;
    if (c->read_paused)
        return 0;
    if (!c->reading)
        return -ENOTCONN;
    c->reading = false;
    c->read_paused = true;
    /* Multishot: cancel, or the kernel keeps filling provided buffers.
     * One-shot (fallback): the recv in flight may complete (at most
     * recv_buf_size bytes, stashed); it is just not submitted again. */
    if (c->multishot && c->recv_armed && !c->recv_cancel) {
        loop__cancel(c->loop, loop__ud(c, LOOP__OP_RECV));
        c->recv_cancel = true;
    }
    return 0;
}

/* Keeps bytes that arrive while reading is stopped (or before the stash
 * was delivered): bounded by the recv in flight when read_stop() ran. */
static void loop__stash(loop_conn_t *c, const void *buf, size_t n)
{
    if (c->stash_end)
        return;
    if (c->stash_len + n > c->stash_cap) {
        size_t cap = c->stash_cap ? c->stash_cap : 16384;
        while (cap < c->stash_len + n)
            cap *= 2;
        uint8_t *p = realloc(c->stash, cap);
        if (p == NULL) { /* no memory to keep the bytes: fail the read side */
            c->stash_end = true;
            c->stash_res = -ENOMEM;
            return;
        }
        c->stash = p;
        c->stash_cap = cap;
    }
    memcpy(c->stash + c->stash_len, buf, n);
    c->stash_len += n;
}

/* The NOP submitted by read_start(): hand over the stash, then go on
 * reading. */
static void loop__on_resume(loop_conn_t *c)
{
    c->resume_armed = false;
    c->inflight--;
    if (c->state == LOOP_CONN_OPEN && c->reading && c->stash_len > 0) {
        size_t n = c->stash_len;
        c->stash_len = 0;
        uint8_t *buf = c->stash; /* a read_stop() in the callback stashes into a new buffer */
        c->stash = NULL;
        c->stash_cap = 0;
        c->read_cb(c, (ssize_t)n, buf, c->data);
        loop__free(buf);
    }
    if (c->state == LOOP_CONN_OPEN && c->reading && c->stash_end && c->stash_len == 0) {
        int res = c->stash_res;
        c->stash_end = false;
        c->reading = false;
        if (res < 0)
            c->state = LOOP_CONN_FAILED;
        c->read_cb(c, res, NULL, c->data);
    }
    if (c->state == LOOP_CONN_OPEN && c->reading && !c->recv_armed)
        loop__arm_recv(c);
    loop__conn_maybe_close(c);
}

static void loop__on_recv(loop_conn_t *c, const struct io_uring_cqe *cqe)
{
    loop_t *loop = c->loop;
    bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    bool has_buf = (cqe->flags & IORING_CQE_F_BUFFER) != 0;
    unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
    int res = cqe->res;
    bool cancelled = false;
    if (!more) {
        c->recv_armed = false;
        c->inflight--;
        cancelled = c->recv_cancel && res == -ECANCELED;
        c->recv_cancel = false;
    }
    const uint8_t *buf = NULL;
    if (has_buf)
        buf = loop->bufs + (size_t)bid * loop->opts.buf_size;
    else if (!c->multishot)
        buf = c->rbuf;

    /* Stopped by loop_conn_read_stop(), or resumed with the stash not yet
     * delivered: keep order by stashing. */
    if (c->state == LOOP_CONN_OPEN && (c->read_paused || c->resume_armed)) {
        if (res > 0) {
            loop->ctr.bytes_in += (uint64_t)res;
            loop->ctr.recv_cqes++;
            loop__stash(c, buf, (size_t)res);
        } else if (res == -EINVAL && c->multishot && !has_buf) {
            loop->features &= ~LOOP_F_RECV_MULTISHOT; /* first-use probe, see below */
            c->multishot = false;
            c->rbuf = malloc(loop->opts.recv_buf_size);
            if (c->rbuf == NULL) {
                c->stash_end = true;
                c->stash_res = -ENOMEM;
            }
        } else if (!cancelled && res != -ENOBUFS && !c->stash_end) {
            c->stash_end = true; /* EOF or error: reported after the bytes */
            c->stash_res = res;
        }
        if (has_buf)
            loop__buf_recycle(loop, bid);
        /* Not re-armed here: read_start() or loop__on_resume() does. */
        loop__conn_maybe_close(c);
        return;
    }
    if (cancelled) { /* a cancel from a read_stop() that a read_start() undid */
        if (c->state == LOOP_CONN_OPEN && c->reading && !c->recv_armed)
            loop__arm_recv(c);
        loop__conn_maybe_close(c);
        return;
    }

    /* Liveness: an earlier callback of this batch may have closed us. */
    if (c->state != LOOP_CONN_OPEN || !c->reading) {
        if (has_buf)
            loop__buf_recycle(loop, bid);
        loop__conn_maybe_close(c);
        return;
    }
    if (res > 0) {
        loop->ctr.bytes_in += (uint64_t)res;
        loop->ctr.recv_cqes++;
        c->read_cb(c, res, buf, c->data);
        if (has_buf) /* the read callback is done with it */
            loop__buf_recycle(loop, bid);
    } else if (res == -ENOBUFS) {
        /* Every provided buffer is in use by this batch; they all return
         * before the re-armed recv is submitted. */
        loop->ctr.enobufs++;
    } else if (res == -EINVAL && c->multishot) {
        /* First-use probe: this kernel has a buffer ring but refuses
         * multishot recv.  Fall back for the loop's lifetime. */
        loop->features &= ~LOOP_F_RECV_MULTISHOT;
        c->multishot = false;
        c->rbuf = malloc(loop->opts.recv_buf_size);
        if (c->rbuf == NULL) {
            c->reading = false;
            c->state = LOOP_CONN_FAILED;
            c->read_cb(c, -ENOMEM, NULL, c->data);
        }
    } else {
        if (has_buf)
            loop__buf_recycle(loop, bid);
        c->reading = false;
        if (res < 0)
            c->state = LOOP_CONN_FAILED;
        c->read_cb(c, res, NULL, c->data);
    }
    if (c->state == LOOP_CONN_OPEN && c->reading && !c->recv_armed)
        loop__arm_recv(c);
    loop__conn_maybe_close(c);
}

/*
 * Send size cap.  A sendmsg that returns short means the socket's send
 * buffer is full.  TCP packs one sendmsg into skbs of up to one MSS, and on
 * loopback the MSS is 65483 bytes (MTU 64 KiB), so when sk_sndbuf (what
 * getsockopt(SO_SNDBUF) returns: twice the value set) is smaller than about
 * two such skbs, only ONE segment can be in flight.  A Linux receiver ACKs a
 * lone segment only when its delayed-ACK timer fires (40 ms minimum), so the
 * connection crawls at one segment per 40 ms (~1.6 MB/s) - the "stall" of a
 * 16 MiB echo with SO_SNDBUF 16 KiB; plain blocking send(2) shows it too
 * (see docs/ARCHITECTURE.md).  Capping each sendmsg at a quarter of
 * sk_sndbuf makes each call (TCP_NODELAY: pushed at its end) a smaller skb,
 * so several are in flight and the receiver ACKs at once.  The buffer size
 * is re-read on every short send only (the slow path), because
 * setsockopt() and memory-pressure auto-tuning change it at any time.
 */
#define LOOP__SEND_CAP_MIN 1024u

static void loop__update_send_cap(loop_conn_t *c)
{
    int sndbuf = 0;
    socklen_t len = sizeof sndbuf;
    if (getsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) != 0 || sndbuf <= 0) {
        c->send_cap = 0;
        return;
    }
    size_t cap = (size_t)sndbuf / 4;
    c->send_cap = cap < LOOP__SEND_CAP_MIN ? LOOP__SEND_CAP_MIN : cap;
}

static void loop__on_send(loop_conn_t *c, int res)
{
    c->send_armed = false;
    c->inflight--;
    if (c->state == LOOP_CONN_CLOSING) {
        loop__conn_maybe_close(c);
        return;
    }
    if (res < 0) {
        c->werr = res;
        loop__fail_writes(c, res);
        loop__conn_maybe_close(c);
        return;
    }
    size_t left = (size_t)res;
    c->loop->ctr.bytes_out += left;
    if (left < c->sending) {
        c->loop->ctr.partial_sends++;
        loop__update_send_cap(c);
    }
    c->queued -= left;
    /* Unlink every fully sent request first, then run their callbacks: a
     * callback may close the connection or queue more. */
    loop__wreq_t *done = NULL, **done_tail = &done;
    loop__wreq_t *w;
    while ((w = c->wq_head) != NULL) {
        while (w->idx < w->iovcnt) {
            size_t avail = w->iov[w->idx].iov_len - w->off;
            if (left >= avail) {
                left -= avail;
                w->idx++;
                w->off = 0;
            } else {
                w->off += left;
                left = 0;
                break;
            }
        }
        if (w->idx < w->iovcnt)
            break;
        c->wq_head = w->next;
        if (c->wq_head == NULL)
            c->wq_tail = &c->wq_head;
        w->next = NULL;
        *done_tail = w;
        done_tail = &w->next;
    }
    while ((w = done) != NULL) {
        done = w->next;
        if (w->cb != NULL)
            w->cb(c, 0, w->arg);
        loop__free(w);
    }
    if (c->state != LOOP_CONN_CLOSING && c->werr == 0 && c->wq_head != NULL && !c->send_armed)
        loop__arm_send(c);
    loop__conn_maybe_close(c);
}

static int loop__queue_write(loop_conn_t *c, loop__wreq_t *w, size_t bytes)
{
    *c->wq_tail = w;
    c->wq_tail = &w->next;
    c->queued += bytes;
    if (c->state == LOOP_CONN_OPEN && !c->send_armed)
        loop__arm_send(c);
    return 0;
}

static int loop__write_check(const loop_conn_t *c)
{
    if (c->state != LOOP_CONN_OPEN && c->state != LOOP_CONN_CONNECTING)
        return -EPIPE;
    return c->werr;
}

int loop_conn_write(loop_conn_t *c, const struct iovec *iov, int iovcnt, loop_write_cb cb,
                    void *req_arg)
{
    int ret = loop__write_check(c);
    if (ret != 0)
        return ret;
    if (iovcnt <= 0 || iovcnt > 1024)
        return -EINVAL;
    size_t bytes = 0;
    for (int i = 0; i < iovcnt; i++)
        bytes += iov[i].iov_len;
    if (bytes == 0)
        return -EINVAL; /* nothing to send would mean a synchronous callback */
    loop__wreq_t *w = loop__alloc(sizeof *w + (size_t)iovcnt * sizeof w->iov[0]);
    if (w == NULL)
        return -ENOMEM;
    w->cb = cb;
    w->arg = req_arg;
    w->iovcnt = iovcnt;
    memcpy(w->iov, iov, (size_t)iovcnt * sizeof iov[0]);
    /* A zero-length first iovec must not stall the "off < len" invariant. */
    while (w->idx < w->iovcnt && w->iov[w->idx].iov_len == 0)
        w->idx++;
    return loop__queue_write(c, w, bytes);
}

int loop_conn_write_copy(loop_conn_t *c, const void *buf, size_t len)
{
    int ret = loop__write_check(c);
    if (ret != 0)
        return ret;
    if (len == 0)
        return -EINVAL;
    loop__wreq_t *w = malloc(sizeof *w + sizeof w->iov[0] + len);
    if (w == NULL)
        return -ENOMEM;
    memset(w, 0, sizeof *w);
    w->iovcnt = 1;
    w->iov[0].iov_base = (char *)(w->iov + 1);
    w->iov[0].iov_len = len;
    memcpy(w->iov[0].iov_base, buf, len);
    return loop__queue_write(c, w, len);
}

void loop_conn_close(loop_conn_t *c, loop_close_cb cb)
{
    if (c->state == LOOP_CONN_CLOSING)
        loop__fatal("loop_conn_close called twice on one connection");
    c->state = LOOP_CONN_CLOSING;
    c->close_cb = cb;
    c->reading = false;
    c->read_paused = false;
    if (c->recv_armed)
        loop__cancel(c->loop, loop__ud(c, LOOP__OP_RECV));
    if (c->send_armed)
        loop__cancel(c->loop, loop__ud(c, LOOP__OP_SEND));
    if (c->connect_armed)
        loop__cancel(c->loop, loop__ud(c, LOOP__OP_CONNECT));
    loop__conn_maybe_close(c);
}

static void loop__on_close(loop_conn_t *c, int res)
{
    (void)res; /* the fd is gone either way (close(2) semantics) */
    c->inflight--;
    c->fd = -1;
    loop__fail_writes(c, -ECANCELED);
    if (c->close_cb != NULL)
        c->close_cb(c, c->data);
    c->loop->ctr.closed++;
    loop__conn_free(c);
}

static int loop__parse_addr(const char *ip, uint16_t port, struct sockaddr_storage *ss,
                            socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        *len = sizeof *a4;
        return 0;
    }
    if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        *len = sizeof *a6;
        return 0;
    }
    return -EINVAL;
}

int loop_connect(loop_t *loop, const char *ip, uint16_t port, uint64_t timeout_ns,
                 loop_connect_cb cb, void *data, loop_conn_t **out)
{
    struct sockaddr_storage ss;
    socklen_t slen;
    if (loop__parse_addr(ip, port, &ss, &slen) != 0)
        return -EINVAL;
    /* Blocking mode on purpose (file comment): io_uring's connect waits via
     * its internal poll, the thread never blocks. */
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    loop_conn_t *c = loop__conn_new(loop, fd, LOOP_CONN_CONNECTING, data);
    if (c == NULL) {
        close(fd);
        return -ENOMEM;
    }
    loop__nodelay(fd);
    c->peer = ss;
    c->connect_cb = cb;
    /* The connect and its linked timeout must go in one submission. */
    if (io_uring_sq_space_left(&loop->ring) < 2)
        io_uring_submit(&loop->ring);
    struct io_uring_sqe *sqe = loop__sqe(loop);
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)&c->peer, slen);
    io_uring_sqe_set_data64(sqe, loop__ud(c, LOOP__OP_CONNECT));
    c->connect_armed = true;
    c->inflight++;
    if (timeout_ns > 0) {
        sqe->flags |= IOSQE_IO_LINK;
        c->cto.tv_sec = (long long)(timeout_ns / 1000000000u);
        c->cto.tv_nsec = (long long)(timeout_ns % 1000000000u);
        sqe = loop__sqe(loop);
        io_uring_prep_link_timeout(sqe, &c->cto, 0);
        io_uring_sqe_set_data64(sqe, loop__ud(c, LOOP__OP_CONNECT_TIMEOUT));
        c->inflight++;
        /* The timespec is read at submission: submit now so cto may be
         * reused and the timeout starts with the connect. */
        io_uring_submit(&loop->ring);
    }
    if (out != NULL)
        *out = c;
    return 0;
}

static void loop__on_connect(loop_conn_t *c, int res)
{
    c->connect_armed = false;
    c->inflight--;
    if (c->state != LOOP_CONN_CONNECTING) { /* closed meanwhile */
        loop__conn_maybe_close(c);
        return;
    }
    /* We cancel a connect only when closing, handled above; any other
     * cancellation comes from the linked timeout. */
    if (res == -ECANCELED)
        res = -ETIMEDOUT;
    if (res == 0) {
        c->state = LOOP_CONN_OPEN;
        c->loop->ctr.connected++;
    } else {
        c->state = LOOP_CONN_FAILED;
        c->loop->ctr.connect_failed++;
    }
    c->connect_cb(c, res, c->data);
    if (c->state == LOOP_CONN_OPEN && c->wq_head != NULL && !c->send_armed)
        loop__arm_send(c);
    loop__conn_maybe_close(c);
}

void loop_conn_set_data(loop_conn_t *c, void *data)
{
    c->data = data;
}

void *loop_conn_data(const loop_conn_t *c)
{
    return c->data;
}

loop_conn_state_t loop_conn_state(const loop_conn_t *c)
{
    return c->state;
}

loop_t *loop_conn_loop(const loop_conn_t *c)
{
    return c->loop;
}

int loop_conn_fd(const loop_conn_t *c)
{
    return c->fd;
}

size_t loop_conn_write_queued(const loop_conn_t *c)
{
    return c->queued;
}

/* ------------------------------------------------------------ listeners */

static void loop__arm_accept(loop_listener_t *l)
{
    struct io_uring_sqe *sqe = loop__sqe(l->loop);
    l->multishot = (l->loop->features & LOOP_F_ACCEPT_MULTISHOT) != 0;
    if (l->multishot)
        io_uring_prep_multishot_accept(sqe, l->fd, NULL, NULL, SOCK_CLOEXEC);
    else
        io_uring_prep_accept(sqe, l->fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, loop__ud(l, LOOP__OP_ACCEPT));
    l->armed = true;
    l->inflight++;
}

static void loop__listener_maybe_close(loop_listener_t *l)
{
    if (l->state != LOOP__L_CLOSING || l->inflight != 0)
        return;
    struct io_uring_sqe *sqe = loop__sqe(l->loop);
    io_uring_prep_close(sqe, l->fd);
    io_uring_sqe_set_data64(sqe, loop__ud(l, LOOP__OP_LISTENER_CLOSE));
    l->inflight++;
}

static void loop__accept_retry(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    loop_listener_t *l = arg;
    if (l->state == LOOP__L_LISTENING && !l->armed)
        loop__arm_accept(l);
}

/* Closes an fd we will not use, without blocking the loop thread. */
static void loop__close_fd_async(loop_t *loop, int fd)
{
    struct io_uring_sqe *sqe = loop__sqe(loop);
    io_uring_prep_close(sqe, fd);
    io_uring_sqe_set_data64(sqe, loop__ud(NULL, LOOP__OP_IGNORE));
}

static void loop__on_accept(loop_listener_t *l, const struct io_uring_cqe *cqe)
{
    loop_t *loop = l->loop;
    bool more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    int res = cqe->res;
    if (!more) {
        l->armed = false;
        l->inflight--;
    }
    if (l->state != LOOP__L_LISTENING) {
        if (res >= 0)
            loop__close_fd_async(loop, res);
        loop__listener_maybe_close(l);
        return;
    }
    if (res >= 0) {
        loop_conn_t *c = loop__conn_new(loop, res, LOOP_CONN_OPEN, l->arg);
        if (c == NULL) {
            loop->ctr.accept_errors++;
            loop__close_fd_async(loop, res);
        } else {
            loop__nodelay(res);
            loop->ctr.accepted++;
            l->cb(l, c, l->arg);
        }
    } else if (res == -EINVAL && l->multishot) {
        /* First-use probe: no multishot accept (before 5.19). */
        loop->features &= ~LOOP_F_ACCEPT_MULTISHOT;
    } else if (res != -ECANCELED && res != -EINTR && res != -ECONNABORTED) {
        loop->ctr.accept_errors++;
        /* Out of fds or memory: retrying at once would spin. */
        if (!l->armed && l->state == LOOP__L_LISTENING) {
            if (loop_timer_start(loop, &l->retry, LOOP__ACCEPT_RETRY_NS, 0, loop__accept_retry,
                                 l) != 0)
                loop__fatal("accept retry timer: out of memory");
        }
        return;
    }
    if (l->state == LOOP__L_LISTENING && !l->armed && !loop_timer_active(&l->retry))
        loop__arm_accept(l);
    loop__listener_maybe_close(l);
}

int loop_listen(loop_t *loop, const char *ip, uint16_t port, int backlog, loop_accept_cb cb,
                void *arg, loop_listener_t **out)
{
    struct sockaddr_storage ss;
    socklen_t slen;
    int ret;
    if (loop__parse_addr(ip, port, &ss, &slen) != 0)
        return -EINVAL;
    loop_listener_t *l = loop__alloc(sizeof *l);
    if (l == NULL)
        return -ENOMEM;
    l->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l->fd < 0) {
        ret = -errno;
        perror("socket(listen)");
        goto err_free;
    }
    int one = 1;
    /* Restart without waiting for TIME_WAIT sockets of the last run. */
    if (setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
        ret = -errno;
        perror("setsockopt(SO_REUSEADDR)");
        goto err_close;
    }
    if (bind(l->fd, (struct sockaddr *)&ss, slen) != 0) {
        ret = -errno;
        goto err_close;
    }
    if (listen(l->fd, backlog > 0 ? backlog : 128) != 0) {
        ret = -errno;
        perror("listen");
        goto err_close;
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    if (getsockname(l->fd, (struct sockaddr *)&bound, &blen) != 0) {
        ret = -errno;
        perror("getsockname(listen)");
        goto err_close;
    }
    l->port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                               : ((struct sockaddr_in6 *)&bound)->sin6_port);
    l->loop = loop;
    l->state = LOOP__L_LISTENING;
    l->cb = cb;
    l->arg = arg;
    loop_timer_init(&l->retry);
    l->next = loop->listeners;
    if (loop->listeners != NULL)
        loop->listeners->prev = l;
    loop->listeners = l;
    loop__arm_accept(l);
    if (out != NULL)
        *out = l;
    return 0;

err_close:
    close(l->fd);
err_free:
    loop__free(l);
    return ret;
}

uint16_t loop_listener_port(const loop_listener_t *l)
{
    return l->port;
}

void loop_listener_close(loop_listener_t *l)
{
    if (l->state == LOOP__L_CLOSING)
        return;
    l->state = LOOP__L_CLOSING;
    loop_timer_stop(l->loop, &l->retry);
    if (l->armed)
        loop__cancel(l->loop, loop__ud(l, LOOP__OP_ACCEPT));
    loop__listener_maybe_close(l);
}

static void loop__listener_free(loop_listener_t *l)
{
    loop_t *loop = l->loop;
    if (l->prev != NULL)
        l->prev->next = l->next;
    else
        loop->listeners = l->next;
    if (l->next != NULL)
        l->next->prev = l->prev;
    loop__free(l);
}

static void loop__on_listener_close(loop_listener_t *l)
{
    l->inflight--;
    loop__listener_free(l);
}

void loop_stop_accepting(loop_t *loop)
{
    for (loop_listener_t *l = loop->listeners; l != NULL; l = l->next)
        loop_listener_close(l);
}

/* ------------------------------------------------------------- shutdown */

static void loop__shutdown_deadline(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t;
    loop_close_cb forced_cb = (loop_close_cb)(uintptr_t)arg;
    loop->result = -ETIMEDOUT;
    for (loop_conn_t *c = loop->conns; c != NULL; c = c->next)
        if (c->state != LOOP_CONN_CLOSING)
            loop_conn_close(c, forced_cb);
}

int loop_shutdown(loop_t *loop, uint64_t deadline_ns, loop_close_cb forced_close_cb)
{
    loop_stop_accepting(loop);
    loop->shutting_down = true;
    /* The callback travels through the timer's void *: a function pointer
     * round-trips through uintptr_t on every platform we build for. */
    return loop_timer_start(loop, &loop->shutdown_timer, deadline_ns, 0, loop__shutdown_deadline,
                            (void *)(uintptr_t)forced_close_cb);
}


/* ------------------------------------------------------- fd readiness watch
 * (loop_watch_*: see loop.h.)  State: `armed` while a poll request is in
 * flight, with the mask it was armed with; a change of the wanted mask
 * removes that poll and the completion re-arms with the new one.  The
 * object is freed only by the completion of its last request, as for
 * connections, so a CQE never points at freed memory. */
struct st_loop_watch_t {
    loop_t *loop;
    int fd;
    unsigned want;       /* LOOP_WATCH_* wanted by the caller */
    unsigned armed_mask; /* poll mask of the request in flight */
    bool armed;          /* a poll request is in flight */
    bool removing;       /* a poll_remove was submitted for it */
    bool closing;        /* loop_watch_close() called */
    bool in_cb;          /* the callback is running (re-arm after it) */
    loop_watch_cb cb;
    void *arg;
    struct st_loop_watch_t *prev, *next; /* loop->watches */
};

static unsigned loop__watch_mask(unsigned want)
{
    return ((want & LOOP_WATCH_READ) ? POLLIN : 0u) | ((want & LOOP_WATCH_WRITE) ? POLLOUT : 0u);
}

static void loop__watch_free(loop_watch_t *w)
{
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        w->loop->watches = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    loop__free(w);
}

/* Brings the kernel side in line with w->want (called outside callbacks). */
static void loop__watch_sync(loop_watch_t *w)
{
    if (w->in_cb)
        return; /* loop__on_poll re-syncs after the callback */
    if (w->closing) {
        if (!w->armed) {
            loop__watch_free(w);
        } else if (!w->removing) {
            w->removing = true;
            struct io_uring_sqe *sqe = loop__sqe(w->loop);
            io_uring_prep_poll_remove(sqe, loop__ud(w, LOOP__OP_POLL));
            io_uring_sqe_set_data64(sqe, loop__ud(NULL, LOOP__OP_IGNORE));
        }
        return;
    }
    unsigned mask = loop__watch_mask(w->want);
    if (w->armed) {
        if (mask != w->armed_mask && !w->removing) {
            w->removing = true;
            struct io_uring_sqe *sqe = loop__sqe(w->loop);
            io_uring_prep_poll_remove(sqe, loop__ud(w, LOOP__OP_POLL));
            io_uring_sqe_set_data64(sqe, loop__ud(NULL, LOOP__OP_IGNORE));
        }
        return;
    }
    if (mask == 0)
        return;
    struct io_uring_sqe *sqe = loop__sqe(w->loop);
    io_uring_prep_poll_add(sqe, w->fd, mask);
    io_uring_sqe_set_data64(sqe, loop__ud(w, LOOP__OP_POLL));
    w->armed = true;
    w->armed_mask = mask;
}

static void loop__on_poll(loop_watch_t *w, int res)
{
    w->armed = false;
    w->removing = false;
    if (!w->closing && res > 0) {
        unsigned ev = 0;
        if (res & (POLLIN | POLLPRI | POLLRDHUP))
            ev |= LOOP_WATCH_READ;
        if (res & POLLOUT)
            ev |= LOOP_WATCH_WRITE;
        if (res & (POLLERR | POLLHUP | POLLNVAL))
            ev |= LOOP_WATCH_READ | LOOP_WATCH_WRITE;
        ev &= w->want;
        if (ev != 0) {
            w->in_cb = true;
            w->cb(w, ev, w->arg);
            w->in_cb = false;
        }
    } else if (!w->closing && res < 0 && res != -ECANCELED && res != -ENOENT) {
        /* -EBADF & co: the fd went away under us; report it as readiness
         * so the owner's own I/O call sees the error. */
        unsigned ev = w->want;
        if (ev != 0) {
            w->in_cb = true;
            w->cb(w, ev, w->arg);
            w->in_cb = false;
        }
        if (!w->closing)
            w->want = 0; /* do not spin on a dead fd */
    }
    loop__watch_sync(w);
}

int loop_watch_start(loop_t *loop, int fd, loop_watch_cb cb, void *arg, loop_watch_t **out)
{
    if (fd < 0)
        return -EBADF;
    loop_watch_t *w = loop__alloc(sizeof *w);
    if (w == NULL)
        return -ENOMEM;
    w->loop = loop;
    w->fd = fd;
    w->cb = cb;
    w->arg = arg;
    w->next = loop->watches;
    if (w->next != NULL)
        w->next->prev = w;
    loop->watches = w;
    *out = w;
    return 0;
}

void loop_watch_set(loop_watch_t *w, unsigned events)
{
    if (w->closing)
        return;
    w->want = events & (LOOP_WATCH_READ | LOOP_WATCH_WRITE);
    loop__watch_sync(w);
}

unsigned loop_watch_events(const loop_watch_t *w)
{
    return w->want;
}

void loop_watch_close(loop_watch_t *w)
{
    if (w->closing)
        loop__fatal("loop_watch_close called twice");
    w->closing = true;
    w->want = 0;
    loop__watch_sync(w);
}
/* ------------------------------------------------- end of fd readiness watch */

/* ------------------------------------------------------- CQE dispatching */

static void loop__handle_cqe(loop_t *loop, const struct io_uring_cqe *cqe)
{
    uint64_t ud = cqe->user_data;
    if (ud == LIBURING_UDATA_TIMEOUT) /* liburing's own wait timeout (no EXT_ARG) */
        return;
    void *obj = (void *)(uintptr_t)(ud & ~(uint64_t)LOOP__OP_MASK);
    enum loop__op op = (enum loop__op)(ud & LOOP__OP_MASK);
    switch (op) {
    case LOOP__OP_IGNORE:
        return;
    case LOOP__OP_ACCEPT:
        loop__on_accept(obj, cqe);
        return;
    case LOOP__OP_LISTENER_CLOSE:
        loop__on_listener_close(obj);
        return;
    case LOOP__OP_RECV:
        loop__on_recv(obj, cqe);
        return;
    case LOOP__OP_SEND:
        loop__on_send(obj, cqe->res);
        return;
    case LOOP__OP_CONNECT:
        loop__on_connect(obj, cqe->res);
        return;
    case LOOP__OP_CONNECT_TIMEOUT: {
        loop_conn_t *c = obj;
        c->inflight--;
        loop__conn_maybe_close(c);
        return;
    }
    case LOOP__OP_CLOSE:
        loop__on_close(obj, cqe->res);
        return;
    case LOOP__OP_SIGNAL:
        loop__on_signal(loop, cqe->res);
        return;
    case LOOP__OP_WAKE:
        loop__on_wake(loop, cqe->res);
        return;
    case LOOP__OP_POLL:
        loop__on_poll(obj, cqe->res);
        return;
    case LOOP__OP_RESUME:
        loop__on_resume(obj);
        return;
    }
    fprintf(stderr, "loop: CQE with unknown op %u (user_data %#llx)\n", (unsigned)op,
            (unsigned long long)ud);
    abort();
}

/* ------------------------------------------------------------- destroy */

void loop_destroy(loop_t *loop)
{
    if (loop == NULL)
        return;
    /* Tear the ring down first: the kernel cancels every request, so no
     * buffer below is written after we free it. */
    if (loop->br != NULL)
        io_uring_unregister_buf_ring(&loop->ring, LOOP__BGID);
    io_uring_queue_exit(&loop->ring);
    while (loop->conns != NULL) {
        loop_conn_t *c = loop->conns;
        if (c->fd >= 0)
            close(c->fd);
        c->fd = -1;
        loop__fail_writes(c, -ECANCELED);
        if (c->state == LOOP_CONN_CLOSING && c->close_cb != NULL)
            c->close_cb(c, c->data);
        loop__conn_free(c);
    }
    while (loop->watches != NULL) {
        loop_watch_t *w = loop->watches;
        loop->watches = w->next;
        loop__free(w);
    }
    while (loop->listeners != NULL) {
        loop_listener_t *l = loop->listeners;
        close(l->fd);
        loop__listener_free(l);
    }
    if (loop->br != NULL) {
        munmap(loop->br, loop->br_bytes);
        free(loop->bufs);
    }
    if (loop->sig_fd >= 0)
        close(loop->sig_fd);
    if (loop->sig_masked)
        pthread_sigmask(SIG_SETMASK, &loop->sig_oldmask, NULL);
    if (loop->wake_fd >= 0)
        close(loop->wake_fd);
    free(loop->heap);
    free(loop->hooks);
    loop__free(loop);
}
