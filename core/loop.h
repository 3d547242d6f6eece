/*
 * core/loop.h - the io_uring event loop every shop-trace process runs on:
 * one loop per thread, no thread per connection, no blocking call on a loop
 * thread.  It offers timers, signals, cross-thread wake-ups, before-sleep
 * hooks, TCP listen/accept, connect with a timeout, reads, queued writes and
 * asynchronous close.
 *
 * Usage (an echo server):
 *   static void on_read(loop_conn_t *c, ssize_t n, const void *buf, void *arg) {
 *       if (n <= 0) { loop_conn_close(c, NULL); return; }
 *       loop_conn_write_copy(c, buf, (size_t)n);
 *   }
 *   static void on_accept(loop_listener_t *l, loop_conn_t *c, void *arg) {
 *       loop_conn_read_start(c, on_read);
 *   }
 *   loop_t *loop;
 *   loop_create(&loop, NULL);
 *   loop_listen(loop, "127.0.0.1", 7000, 128, on_accept, NULL, NULL);
 *   loop_run(loop);
 *   loop_destroy(loop);
 *
 * ------------------------------------------------------------------------
 * CALLBACK CONTRACT
 *
 * Threads.  A loop belongs to the thread that created it (the ring is set
 * up with IORING_SETUP_SINGLE_ISSUER when the kernel accepts it, which binds
 * it to the creating thread).  Every function below must be called on that
 * thread, except loop_wake() and loop_stop(), which any thread may call.
 *
 * No synchronous callbacks.  No callback ever runs inside the API call that
 * scheduled it: loop_conn_close() never calls the close callback, a write
 * error is reported by loop_conn_write()'s return value or later through the
 * write callback, a timer started with delay 0 fires in the next timer
 * phase.  Callbacks run only from loop_run(), with one exception:
 * loop_destroy() on a loop that still has open connections completes them
 * there (write callbacks with -ECANCELED, then close callbacks).
 *
 * Order inside one iteration of loop_run():
 *   1. before-sleep hooks (loop_hook_add), in registration order;
 *   2. submit pending requests and sleep until a completion or the nearest
 *      timer;
 *   3. every completion of the batch is dispatched (accept, connect, read,
 *      write, close, signal, wake callbacks), then the CQ is advanced once;
 *   4. expired timers fire, earliest deadline first.
 * An earlier callback of a batch may close an object that a later
 * completion of the same batch refers to.  The loop re-checks the state
 * before each callback: once loop_conn_close() was called, no read or
 * connect callback runs for that connection; only the pending write
 * callbacks (-ECANCELED) and the close callback follow.
 *
 * Who frees what.
 *  - loop_t: loop_create() allocates, loop_destroy() frees.
 *  - loop_conn_t: the loop allocates it (accept or loop_connect()); the user
 *    must call loop_conn_close() exactly once for every connection handed to
 *    it, also after an error or EOF.  The memory is freed right after the
 *    close callback returns; the pointer is invalid from then on.
 *  - loop_listener_t: the loop allocates it; loop_listener_close() (or
 *    loop_stop_accepting()) releases it once its pending accept completes.
 *    The pointer is invalid as soon as loop_listener_close() returns.
 *  - loop_timer_t: caller storage (so timers cost no allocation); it must
 *    stay valid while armed.  Stopping an armed timer is O(log n).
 *  - read buffers: owned by the loop, valid only during the read callback.
 *    loop_conn_read_stop()/loop_conn_read_start() give read back-pressure
 *    (a stopped connection's peer blocks on its full window).
 *  - loop_conn_write(): the caller owns the iovec *data* until the write
 *    callback runs (exactly once per accepted write, status 0 or -errno);
 *    the iovec array itself is copied.  loop_conn_write_copy() copies the
 *    bytes into a loop-owned buffer freed when they are sent.
 *
 * Return convention: 0 on success, -errno on failure (STYLE.md).
 * ------------------------------------------------------------------------
 */
#ifndef SHOP_CORE_LOOP_H
#define SHOP_CORE_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ flags */

/* Kernel features the loop detected (loop_features()). */
#define LOOP_F_SINGLE_ISSUER 0x01u  /* IORING_SETUP_SINGLE_ISSUER accepted */
#define LOOP_F_DEFER_TASKRUN 0x02u  /* IORING_SETUP_DEFER_TASKRUN accepted */
#define LOOP_F_COOP_TASKRUN 0x04u   /* IORING_SETUP_COOP_TASKRUN accepted */
#define LOOP_F_EXT_ARG 0x08u        /* IORING_FEAT_EXT_ARG: wait with a timeout, no timeout SQE */
#define LOOP_F_NODROP 0x10u         /* IORING_FEAT_NODROP: CQ overflow never loses a CQE */
#define LOOP_F_BUF_RING 0x20u       /* a provided buffer ring is registered */
#define LOOP_F_RECV_MULTISHOT 0x40u /* multishot recv in use (cleared if the kernel refuses it) */
#define LOOP_F_ACCEPT_MULTISHOT 0x80u /* multishot accept in use (cleared if refused) */

/* Connection states: the explicit state machine of a loop_conn_t.
 *   CONNECTING -> OPEN            connect succeeded
 *   CONNECTING -> FAILED          connect failed or timed out
 *   OPEN -> FAILED                read error (EOF keeps OPEN: the peer may
 *                                 still read our answer; a write error only
 *                                 fails queued and later writes)
 *   any -> CLOSING                loop_conn_close()
 *   CLOSING -> (freed)            after every in-flight op completed, the
 *                                 fd is closed and the close callback ran */
typedef enum {
    LOOP_CONN_CONNECTING = 1,
    LOOP_CONN_OPEN,
    LOOP_CONN_FAILED,
    LOOP_CONN_CLOSING,
} loop_conn_state_t;

/* --------------------------------------------------------------- callbacks */

typedef struct st_loop_t loop_t;
typedef struct st_loop_conn_t loop_conn_t;
typedef struct st_loop_listener_t loop_listener_t;
typedef struct st_loop_timer_t loop_timer_t;

typedef void (*loop_timer_cb)(loop_t *loop, loop_timer_t *timer, void *arg);
/* Before-sleep hook: per-iteration flush work (span batches, corked writes). */
typedef void (*loop_hook_cb)(loop_t *loop, void *arg);
typedef void (*loop_signal_cb)(loop_t *loop, int signo, void *arg);
typedef void (*loop_wake_cb)(loop_t *loop, void *arg);
/* A new connection; its data pointer starts as the listener's arg. */
typedef void (*loop_accept_cb)(loop_listener_t *l, loop_conn_t *conn, void *arg);
/* status 0 (state OPEN) or -errno (-ETIMEDOUT, -ECONNREFUSED, ...; state FAILED). */
typedef void (*loop_connect_cb)(loop_conn_t *conn, int status, void *data);
/* n > 0: n bytes in buf (valid during the call only); n == 0: EOF; n < 0:
 * -errno.  After n <= 0 reading has stopped; n < 0 also moves the state to
 * FAILED, while after EOF the connection stays OPEN for writes (half-close). */
typedef void (*loop_read_cb)(loop_conn_t *conn, ssize_t n, const void *buf, void *data);
/* Runs once per loop_conn_write(): 0 when every byte was sent, else -errno
 * (-ECANCELED when the connection was closed first). */
typedef void (*loop_write_cb)(loop_conn_t *conn, int status, void *req_arg);
/* Last callback of a connection; its memory is freed right after. */
typedef void (*loop_close_cb)(loop_conn_t *conn, void *data);

/* ----------------------------------------------------------------- structs */

typedef struct {
    unsigned sq_entries;    /* SQ size; 0 = 256.  The CQ is 4x (multishot bursts). */
    unsigned buf_count;     /* provided buffers, power of two; 0 = 256 */
    unsigned buf_size;      /* bytes per provided buffer; 0 = 16384 */
    unsigned recv_buf_size; /* per-connection buffer in fallback mode; 0 = 16384 */
    bool force_fallback;    /* plain accept + plain recv into a per-connection
                             * buffer even when the kernel has multishot */
    loop_wake_cb on_wake;   /* run on the loop thread after loop_wake() */
    void *wake_arg;
} loop_options_t;

/* Counters since loop_create(); connections are dumped by servers on shutdown. */
typedef struct {
    uint64_t accepted;       /* connections accepted */
    uint64_t connected;      /* outgoing connects that succeeded */
    uint64_t connect_failed; /* outgoing connects that failed or timed out */
    uint64_t closed;         /* close callbacks run */
    uint64_t open;           /* connections handed out and not yet freed */
    uint64_t bytes_in;       /* bytes received */
    uint64_t bytes_out;      /* bytes sent */
    uint64_t recv_cqes;      /* recv completions carrying data */
    uint64_t send_ops;       /* sendmsg requests submitted */
    uint64_t partial_sends;  /* sendmsg completions that sent less than asked */
    uint64_t enobufs;        /* multishot recv stopped: buffer ring empty */
    uint64_t accept_errors;  /* failed accepts (EMFILE, ...) */
} loop_counters_t;

/* A timer.  Public because callers provide the storage (no allocation per
 * timer); the fields are private to loop.c. */
struct st_loop_timer_t {
    uint64_t _deadline; /* CLOCK_MONOTONIC ns */
    uint64_t _repeat;   /* ns; 0 = one-shot */
    uint64_t _seq;      /* start order: breaks ties so equal deadlines fire FIFO */
    loop_timer_cb _cb;
    void *_arg;
    uint32_t _idx; /* position in the loop's heap; UINT32_MAX when not armed */
};

/* -------------------------------------------------------------- prototypes */

/* Creates a loop on the calling thread; opts may be NULL.  *out is freed by
 * loop_destroy().  Errors: -ENOMEM, -EINVAL (bad option), -ENOSYS (no
 * io_uring), -EMFILE, or any io_uring_queue_init_params() error. */
int loop_create(loop_t **out, const loop_options_t *opts);
/* Frees the loop.  In-flight requests are cancelled by the kernel; every
 * connection still allocated has its queued writes failed (-ECANCELED) and,
 * if loop_conn_close() had been called, its close callback run, then it is
 * freed.  Listeners are closed, blocked signals restored. */
void loop_destroy(loop_t *loop);

/* Runs until loop_stop() or the end of a loop_shutdown().  Returns 0, or
 * -ETIMEDOUT when a loop_shutdown() deadline expired, or -errno when
 * io_uring_enter failed fatally. */
int loop_run(loop_t *loop);
/* Makes loop_run() return after the current iteration.  Thread-safe. */
void loop_stop(loop_t *loop);
/* Wakes the loop and runs opts.on_wake on its thread.  Thread-safe,
 * async-signal-safe (one write(2) to an eventfd).  Wake-ups coalesce. */
void loop_wake(loop_t *loop);

uint64_t loop_now_ns(void); /* CLOCK_MONOTONIC in ns */
unsigned loop_features(const loop_t *loop);
void loop_counters(const loop_t *loop, loop_counters_t *out);

/* Before-sleep hooks.  Errors: -ENOMEM.  Removing the hook that is running
 * is allowed. */
int loop_hook_add(loop_t *loop, loop_hook_cb cb, void *arg);
void loop_hook_remove(loop_t *loop, loop_hook_cb cb, void *arg);

/* Timers: fire once after delay_ns, then every repeat_ns if repeat_ns > 0.
 * Starting an armed timer re-arms it.  A stopped timer never fires, even if
 * it had expired in the current iteration.  A callback may stop or restart
 * its own timer.  Errors: -ENOMEM (heap growth). */
void loop_timer_init(loop_timer_t *t);
int loop_timer_start(loop_t *loop, loop_timer_t *t, uint64_t delay_ns, uint64_t repeat_ns,
                     loop_timer_cb cb, void *arg);
void loop_timer_stop(loop_t *loop, loop_timer_t *t);
bool loop_timer_active(const loop_timer_t *t);

/* Delivers signo through the loop (signalfd read by io_uring).  Blocks the
 * signal in the calling thread: call it before creating other threads so
 * they inherit the mask, else a thread without the block may take the
 * signal.  cb NULL removes the handler.  Errors: -EINVAL (bad signo),
 * -errno of signalfd(2). */
int loop_signal(loop_t *loop, int signo, loop_signal_cb cb, void *arg);

/* TCP listen on a numeric IPv4/IPv6 address (no DNS: it would block) and
 * port (0 = ephemeral, see loop_listener_port()).  Accepts with multishot
 * accept when the kernel supports it.  out may be NULL.  Errors: -EINVAL
 * (address), -ENOMEM, -errno of socket/bind/listen (-EADDRINUSE, ...). */
int loop_listen(loop_t *loop, const char *ip, uint16_t port, int backlog, loop_accept_cb cb,
                void *arg, loop_listener_t **out);
uint16_t loop_listener_port(const loop_listener_t *l);
void loop_listener_close(loop_listener_t *l);
/* Closes every listener: new connections are refused, open ones go on. */
void loop_stop_accepting(loop_t *loop);
/* Graceful shutdown: stop accepting, let open connections finish, and stop
 * the loop when none is left (loop_run() returns 0).  When deadline_ns
 * (a delay from now, in ns, not a loop_now_ns() time) passes first, every connection not yet closing is closed with
 * forced_close_cb (may be NULL) as its close callback, and loop_run()
 * returns -ETIMEDOUT after the close callbacks ran.  Call it from a loop
 * callback (typically the SIGTERM handler).  Errors: -ENOMEM (timer heap). */
int loop_shutdown(loop_t *loop, uint64_t deadline_ns, loop_close_cb forced_close_cb);

/* Outgoing TCP connect to a numeric address with a timeout (0 = none).  The
 * connection is in state CONNECTING until cb runs.  data is the connection's
 * data pointer.  out may be NULL.  Errors: -EINVAL (address), -ENOMEM,
 * -errno of socket(2).  Connect failures arrive through cb. */
int loop_connect(loop_t *loop, const char *ip, uint16_t port, uint64_t timeout_ns,
                 loop_connect_cb cb, void *data, loop_conn_t **out);

/* Starts reading (multishot recv with provided buffers, or plain recv into a
 * per-connection buffer), or resumes it after loop_conn_read_stop() (cb may
 * differ; bytes kept while stopped are delivered first, from the loop, never
 * inside this call).  Errors: -EALREADY (reading), -ENOTCONN (state is not
 * OPEN), -ENOMEM (fallback buffer). */
int loop_conn_read_start(loop_conn_t *conn, loop_read_cb cb);
/* Read back-pressure: stops reading until loop_conn_read_start().  No read
 * callback runs after it returns (also not for CQEs already in the current
 * batch).  The multishot recv is cancelled (fallback: the recv in flight is
 * not re-submitted); bytes the kernel had already handed over are kept by
 * the loop, at most what one recv in flight can return, and an EOF or error
 * seen meanwhile is reported after them.  The kernel's receive buffer then
 * fills, the TCP window closes and the peer's sends block: memory stays
 * bounded however much the peer writes.  Writing is unaffected.  Calling it
 * while stopped is a no-op (0).  Errors: -ENOTCONN (state is not OPEN, or
 * reading never started or ended with EOF/error). */
int loop_conn_read_stop(loop_conn_t *conn);
/* Queues iov[0..iovcnt) for sending after every earlier write; bytes are
 * sent in order, several queued writes per sendmsg.  Errors: -EINVAL
 * (iovcnt), -ENOMEM, -EPIPE (state is not OPEN: no callback will run). */
int loop_conn_write(loop_conn_t *conn, const struct iovec *iov, int iovcnt, loop_write_cb cb,
                    void *req_arg);
/* Copies len bytes and queues them; no callback.  Errors as loop_conn_write. */
int loop_conn_write_copy(loop_conn_t *conn, const void *buf, size_t len);
/* Starts the asynchronous close (see the contract).  cb may be NULL.
 * Calling it twice is a bug and aborts. */
void loop_conn_close(loop_conn_t *conn, loop_close_cb cb);

void loop_conn_set_data(loop_conn_t *conn, void *data);
void *loop_conn_data(const loop_conn_t *conn);
loop_conn_state_t loop_conn_state(const loop_conn_t *conn);
loop_t *loop_conn_loop(const loop_conn_t *conn);
/* The socket, for setsockopt(2) only: never read, write or close it. */
int loop_conn_fd(const loop_conn_t *conn);
/* Bytes queued and not yet sent. */
size_t loop_conn_write_queued(const loop_conn_t *conn);

/* ------------------------------------------------------- fd readiness watch
 * (added for core/pg and core/redis: libpq and hiredis own their sockets
 * and do their own recv/send, so they need readiness, not completions.)
 *
 * A watch reports when a foreign fd becomes readable and/or writable, with
 * a one-shot IORING_OP_POLL_ADD re-armed after each report, so it behaves
 * like a level-triggered epoll: as long as the fd is ready and the events
 * are wanted, the callback runs once per loop iteration.  One-shot rather
 * than multishot on purpose: multishot poll reports wake-ups (edge), and
 * libpq/hiredis do not promise to drain the socket on each call.
 *
 * Contract: the callback never runs inside loop_watch_*(); events is a mask
 * of LOOP_WATCH_READ/WRITE (an error or hang-up on the fd reports every
 * wanted event, so the library's own read/write sees the error).  The fd
 * stays the caller's: the loop never reads, writes or closes it.  The caller
 * may close the fd right after loop_watch_close() (the in-flight poll holds
 * its own reference to the file and is cancelled).  loop_watch_close() may
 * be called from the watch's own callback; no callback runs after it. */
#define LOOP_WATCH_READ 0x1u
#define LOOP_WATCH_WRITE 0x2u

typedef struct st_loop_watch_t loop_watch_t;
typedef void (*loop_watch_cb)(loop_watch_t *w, unsigned events, void *arg);

/* Creates a watch on fd with no events wanted yet.  *out is freed by the
 * loop after loop_watch_close().  Errors: -EBADF (fd < 0), -ENOMEM. */
int loop_watch_start(loop_t *loop, int fd, loop_watch_cb cb, void *arg, loop_watch_t **out);
/* Sets the wanted events (0 = pause).  Never calls the callback. */
void loop_watch_set(loop_watch_t *w, unsigned events);
unsigned loop_watch_events(const loop_watch_t *w);
/* Stops and releases the watch (asynchronously). */
void loop_watch_close(loop_watch_t *w);
/* ------------------------------------------------- end of fd readiness watch */

#ifdef __cplusplus
}
#endif

#endif
