/*
 * tests/db/db_test.h - helpers shared by the DB integration tests: run the
 * loop until a condition holds, start/stop the harness scripts, and a span
 * sink that keeps decoded spans for attribute checks.
 */
#ifndef SHOP_TESTS_DB_TEST_H
#define SHOP_TESTS_DB_TEST_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "loop.h"

typedef bool (*dbt_cond_fn)(void *arg);

typedef struct {
    dbt_cond_fn cond;
    void *arg;
    uint64_t deadline;
    bool met;
} dbt_wait_t;

static void dbt__tick(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)t;
    dbt_wait_t *w = arg;
    if (w->cond(w->arg)) {
        w->met = true;
        loop_stop(loop);
    } else if (loop_now_ns() > w->deadline) {
        loop_stop(loop);
    }
}

/* Runs the loop until cond(arg) or timeout_ms; returns whether cond held. */
__attribute__((unused)) static bool dbt_run_until(loop_t *loop, dbt_cond_fn cond, void *arg,
                                                  uint64_t timeout_ms)
{
    dbt_wait_t w = {cond, arg, loop_now_ns() + timeout_ms * 1000000u, false};
    loop_timer_t t;
    loop_timer_init(&t);
    loop_timer_start(loop, &t, 1000000u, 2000000u, dbt__tick, &w);
    loop_run(loop);
    loop_timer_stop(loop, &t);
    return w.met;
}

/* Runs "<script> <cmd> <dir>", returns its first output line (static). */
__attribute__((unused)) static const char *dbt_harness(const char *script, const char *cmd,
                                                       const char *dir)
{
    static char line[512];
    char c[1200];
    snprintf(c, sizeof c, "'%s' %s '%s'", script, cmd, dir);
    FILE *f = popen(c, "r");
    if (f == NULL)
        return NULL;
    line[0] = '\0';
    if (fgets(line, sizeof line, f) == NULL)
        line[0] = '\0';
    int st = pclose(f);
    line[strcspn(line, "\n")] = '\0';
    return st == 0 ? line : NULL;
}

/* ------------------------------------------------------------ span sink */

#define DBT_SPANS_MAX 8192
#define DBT_ATTRS_MAX 16

typedef struct {
    char name[96];
    int kind, status;
    int nattrs;
    char key[DBT_ATTRS_MAX][40];
    char val[DBT_ATTRS_MAX][200]; /* strings; ints printed in decimal */
} dbt_span_t;

static dbt_span_t dbt_spans[DBT_SPANS_MAX];
static int dbt_nspans;

static void dbt_sink(void *arg, const void *rec, uint32_t len, bool truncated)
{
    (void)arg;
    (void)truncated;
    span_record_t r;
    if (dbt_nspans >= DBT_SPANS_MAX || span_record_decode(rec, len, &r) != 0)
        return;
    dbt_span_t *s = &dbt_spans[dbt_nspans++];
    snprintf(s->name, sizeof s->name, "%.*s", (int)r.name.len, r.name.p);
    s->kind = r.kind;
    s->status = r.status;
    uint32_t off = 0;
    span_record_item_t it;
    while (span_record_next(r.items, r.items_len, &off, &it) == 1 && s->nattrs < DBT_ATTRS_MAX) {
        if (it.tag != SPAN_ITEM_ATTR)
            continue;
        int i = s->nattrs++;
        snprintf(s->key[i], sizeof s->key[i], "%.*s", (int)it.key.len, it.key.p);
        if (it.type == TRACE_ATTR_STRING) {
            snprintf(s->val[i], sizeof s->val[i], "%.*s", (int)it.value_len, (const char *)it.value);
        } else if (it.type == TRACE_ATTR_INT) {
            int64_t v;
            memcpy(&v, it.value, 8);
            snprintf(s->val[i], sizeof s->val[i], "%lld", (long long)v);
        } else {
            s->val[i][0] = '\0';
        }
    }
}

__attribute__((unused)) static const char *dbt_attr(const dbt_span_t *s, const char *key)
{
    for (int i = 0; i < s->nattrs; i++)
        if (strcmp(s->key[i], key) == 0)
            return s->val[i];
    return NULL;
}

__attribute__((unused)) static int dbt_trace_init(void)
{
    char err[256] = "";
    trace_options_t o = {.service_name = "test-db", .no_ring = true, .sink = dbt_sink};
    int ret = trace_init(&o, err, sizeof err);
    if (ret != 0)
        fprintf(stderr, "trace_init: %s\n", err);
    return ret;
}

#endif
