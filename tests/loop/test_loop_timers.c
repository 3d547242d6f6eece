/*
 * tests/loop/test_loop_timers.c - the loop without sockets: timer order,
 * cancellation, repetition, before-sleep hooks, signals through the
 * signalfd and wake-ups from another thread.
 *
 * Usage: test_loop_timers   (TAP on stdout)
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loop.h"
#include "loop_test.h"
#include "tap.h"

/* ------------------------------------------------------------ signals */

static int sig_seen[_NSIG];

static void on_signal(loop_t *loop, int signo, void *arg)
{
    (void)arg;
    sig_seen[signo]++;
    if (sig_seen[SIGTERM] && sig_seen[SIGUSR1])
        loop_stop(loop);
}

static void raise_signals(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    (void)arg;
    kill(getpid(), SIGTERM); /* blocked: queued for the signalfd */
    kill(getpid(), SIGUSR1);
}

static void guard_expired(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t;
    *(int *)arg = 1;
    loop_stop(loop);
}

static void test_signals(void)
{
    loop_t *loop;
    tap_check(loop_create(&loop, NULL) == 0, "signals: loop_create");
    tap_diag("features: %#x", loop_features(loop));
    tap_check(loop_signal(loop, SIGTERM, on_signal, NULL) == 0, "signals: handler for SIGTERM");
    tap_check(loop_signal(loop, SIGUSR1, on_signal, NULL) == 0, "signals: handler for SIGUSR1");
    tap_check(loop_signal(loop, SIGKILL, on_signal, NULL) == -EINVAL, "signals: SIGKILL refused");
    loop_timer_t t, guard;
    int expired = 0;
    loop_timer_init(&t);
    loop_timer_init(&guard);
    loop_timer_start(loop, &t, 5 * LT_MS, 0, raise_signals, NULL);
    loop_timer_start(loop, &guard, 5000 * LT_MS, 0, guard_expired, &expired);
    tap_check(loop_run(loop) == 0, "signals: loop_run returns 0");
    tap_check(!expired, "signals: delivered before the 5 s guard");
    tap_check(sig_seen[SIGTERM] == 1, "signals: SIGTERM sent to the process ran the loop callback once");
    tap_check(sig_seen[SIGUSR1] == 1, "signals: SIGUSR1 callback ran once");
    loop_timer_stop(loop, &guard);
    loop_destroy(loop);
    sigset_t cur;
    pthread_sigmask(SIG_SETMASK, NULL, &cur);
    tap_check(!sigismember(&cur, SIGTERM), "signals: loop_destroy restored the signal mask");
}

/* ------------------------------------------------------------- timers */

typedef struct {
    int order[16];
    int n;
    int repeats;
    int cancelled_fired;
    uint64_t repeat_first, repeat_last;
    loop_timer_t t[8];
} timers_t;

static timers_t T;

static void fire_id(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    T.order[T.n++] = (int)(intptr_t)arg;
}

static void fire_cancelled(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    (void)arg;
    T.cancelled_fired++;
}

/* Expires together with t[6] (started after it) and stops it. */
static void fire_stopper(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t;
    (void)arg;
    loop_timer_stop(loop, &T.t[6]);
}

static void fire_repeat(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)arg;
    uint64_t now = loop_now_ns();
    if (T.repeats++ == 0)
        T.repeat_first = now;
    T.repeat_last = now;
    if (T.repeats == 5)
        loop_timer_stop(loop, t);
}

static void fire_end(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t;
    (void)arg;
    loop_stop(loop);
}

static void fire_sleep(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    (void)arg;
    usleep(5000); /* a test-only stall of the loop thread */
}

static int hook_runs;
static void hook(loop_t *loop, void *arg)
{
    (void)loop;
    (void)arg;
    hook_runs++;
}

static int hook2_runs;
static void hook_once(loop_t *loop, void *arg)
{
    (void)arg;
    hook2_runs++;
    loop_hook_remove(loop, hook_once, NULL); /* removing itself while running */
}

static void test_timers(void)
{
    loop_t *loop;
    tap_check(loop_create(&loop, NULL) == 0, "timers: loop_create");
    loop_timer_t sleeper;
    loop_timer_init(&sleeper);
    for (int i = 0; i < 8; i++)
        loop_timer_init(&T.t[i]);
    tap_check(loop_hook_add(loop, hook, NULL) == 0, "hooks: add");
    tap_check(loop_hook_add(loop, hook_once, NULL) == 0, "hooks: add a self-removing hook");
    uint64_t t0 = loop_now_ns();
    loop_timer_start(loop, &T.t[0], 30 * LT_MS, 0, fire_id, (void *)(intptr_t)30);
    loop_timer_start(loop, &T.t[1], 10 * LT_MS, 0, fire_id, (void *)(intptr_t)10);
    loop_timer_start(loop, &T.t[2], 20 * LT_MS, 0, fire_id, (void *)(intptr_t)20);
    loop_timer_start(loop, &T.t[3], 15 * LT_MS, 0, fire_cancelled, NULL);
    loop_timer_start(loop, &T.t[4], 1 * LT_MS, 4 * LT_MS, fire_repeat, NULL);
    /* t[0] (38 ms) sleeps 5 ms, so t[5] (39 ms) and t[6] (40 ms) are both
     * expired in the next timer phase; t[5] stops t[6] there. */
    loop_timer_start(loop, &T.t[5], 39 * LT_MS, 0, fire_stopper, NULL);
    loop_timer_start(loop, &T.t[6], 40 * LT_MS, 0, fire_cancelled, NULL);
    loop_timer_start(loop, &T.t[7], 80 * LT_MS, 0, fire_end, NULL);
    loop_timer_start(loop, &sleeper, 38 * LT_MS, 0, fire_sleep, NULL);
    loop_timer_stop(loop, &T.t[3]);
    tap_check(!loop_timer_active(&T.t[3]), "timers: a stopped timer is inactive");
    tap_check(loop_run(loop) == 0, "timers: loop_run returns 0");
    uint64_t el = loop_now_ns() - t0;
    tap_check(T.n == 3 && T.order[0] == 10 && T.order[1] == 20 && T.order[2] == 30,
              "timers fire in deadline order (got %d: %d %d %d)", T.n, T.order[0], T.order[1],
              T.order[2]);
    tap_check(T.cancelled_fired == 0,
              "a cancelled timer never fires, also when stopped by a timer expiring with it");
    tap_check(T.repeats == 5, "a repeating timer repeated until it stopped itself (%d)", T.repeats);
    /* Fixed rate: the n-th run is due at start + 1 ms + n * 4 ms, however
     * late the first one ran. */
    tap_check(T.repeat_last - t0 >= 17 * LT_MS && T.repeat_first - t0 >= 1 * LT_MS,
              "repeats keep the period (first %llu ns, fifth %llu ns after start)",
              (unsigned long long)(T.repeat_first - t0), (unsigned long long)(T.repeat_last - t0));
    tap_check(el >= 80 * LT_MS && el < 2000 * LT_MS, "the last timer stopped the loop after 80 ms");
    tap_check(hook_runs >= 5, "before-sleep hook ran every iteration (%d)", hook_runs);
    tap_check(hook2_runs == 1, "a hook that removed itself ran once (%d)", hook2_runs);
    loop_destroy(loop);
}

/* ------------------------------------------------------------ wake-up */

static atomic_int wake_value;
static int wakes_seen;

static void on_wake(loop_t *loop, void *arg)
{
    (void)arg;
    if (atomic_load(&wake_value) == 42) {
        wakes_seen++;
        loop_stop(loop);
    }
}

static void *waker(void *arg)
{
    loop_t *loop = arg;
    usleep(20000);
    atomic_store(&wake_value, 42);
    loop_wake(loop);
    return NULL;
}

static void *stopper(void *arg)
{
    usleep(20000);
    loop_stop(arg);
    return NULL;
}

static void test_wake(void)
{
    loop_t *loop;
    loop_options_t o = {.on_wake = on_wake};
    tap_check(loop_create(&loop, &o) == 0, "wake: loop_create");
    pthread_t th;
    pthread_create(&th, NULL, waker, loop);
    uint64_t t0 = loop_now_ns();
    tap_check(loop_run(loop) == 0, "wake: loop_run returns 0");
    pthread_join(th, NULL);
    tap_check(wakes_seen == 1, "wake-up from another thread ran on_wake on the loop (%d)", wakes_seen);
    tap_check(loop_now_ns() - t0 < 2000 * LT_MS, "wake: the loop slept without timers and woke");
    pthread_create(&th, NULL, stopper, loop);
    tap_check(loop_run(loop) == 0, "loop_stop from another thread ends loop_run");
    pthread_join(th, NULL);
    loop_destroy(loop);
}

int main(void)
{
    test_signals(); /* first: signals must be blocked before any thread exists */
    test_timers();
    test_wake();
    return tap_done();
}
