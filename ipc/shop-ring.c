/*
 * ipc/shop-ring.c - inspect and manage the shared-memory span ring.
 *
 * Usage:
 *   shop-ring stat [--name /shop-trace] [--json]
 *   shop-ring lanes [--name /shop-trace] [--json]
 *   shop-ring create [--name /shop-trace] --lanes 64 --lane-size 1048576 --max-record 4096
 *   shop-ring unlink [--name /shop-trace]
 *
 * `stat` attaches read-only in spirit: it takes neither the consumer role
 * nor a lane, only reads the counters (ring_stats).  Exit status: 0 ok,
 * 1 bad usage or a failed operation, 2 the ring does not exist.
 *
 * `lanes` prints one line per lane that has an owner or records in it:
 * owner pid/tid, alive, and the owner's counters since it claimed the lane
 * (written, dropped because the lane was full, truncated), plus the records
 * still in the lane.  One producing thread holds one lane, so summing the
 * lines of a pid gives that process's share of the ring's totals.
 */
#include "ring.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: shop-ring stat [--name NAME] [--json]\n"
               "       shop-ring lanes [--name NAME] [--json]\n"
               "       shop-ring create [--name NAME] --lanes N --lane-size BYTES "
               "--max-record BYTES\n"
               "       shop-ring unlink [--name NAME]\n"
               "NAME defaults to /shop-trace\n");
}

static int parse_u64(const char *key, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-') {
        fprintf(stderr, "shop-ring: %s=%s: not a non-negative integer\n", key, s);
        return -1;
    }
    *out = v;
    return 0;
}

static void print_human(const char *name, const ring_stats_t *s)
{
    double fill = s->bytes_capacity ? 100.0 * (double)s->bytes_used / (double)s->bytes_capacity : 0;
    uint64_t dropped = 0;
    for (int i = 0; i < RING_DROP__COUNT; i++)
        dropped += s->dropped[i];
    printf("ring %s\n", name);
    printf("  geometry     lanes=%" PRIu32 " lane_size=%" PRIu64 " max_record=%" PRIu32 "\n",
           s->geometry.lanes, s->geometry.lane_size, s->geometry.max_record);
    printf("  written      %" PRIu64 " (truncated %" PRIu64 ")\n", s->written, s->truncated);
    printf("  exported     %" PRIu64 "\n", s->exported);
    printf("  dropped      %" PRIu64 "\n", dropped);
    for (int i = 0; i < RING_DROP__COUNT; i++)
        printf("    %-10s %" PRIu64 "\n", ring_drop_reason_name((ring_drop_reason_t)i),
               s->dropped[i]);
    printf("  torn         %" PRIu64 "\n", s->torn);
    printf("  in_ring      %" PRIu64 " records, %" PRIu64 " bytes, %.1f%% full (exporter lag)\n",
           s->in_ring, s->bytes_used, fill);
    printf("  redelivered  %" PRIu64 "\n", s->redelivered);
    printf("  resyncs      %" PRIu64 "\n", s->resyncs);
    printf("  producers    %" PRIu32 "\n", s->producers);
    if (s->consumer_pid)
        printf("  consumer     pid %" PRId32 "\n", s->consumer_pid);
    else
        printf("  consumer     none\n");
}

static void print_json(const char *name, const ring_stats_t *s)
{
    double fill = s->bytes_capacity ? 100.0 * (double)s->bytes_used / (double)s->bytes_capacity : 0;
    /* shm names are [/A-Za-z0-9._-] in practice; escape the rest crudely */
    printf("{\"name\":\"");
    for (const char *p = name; *p; p++) {
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
            printf("\\u%04x", (unsigned char)*p);
        else
            putchar(*p);
    }
    printf("\",\"lanes\":%" PRIu32 ",\"lane_size\":%" PRIu64 ",\"max_record\":%" PRIu32,
           s->geometry.lanes, s->geometry.lane_size, s->geometry.max_record);
    printf(",\"written\":%" PRIu64 ",\"truncated\":%" PRIu64 ",\"torn\":%" PRIu64
           ",\"exported\":%" PRIu64,
           s->written, s->truncated, s->torn, s->exported);
    printf(",\"dropped\":{");
    for (int i = 0; i < RING_DROP__COUNT; i++)
        printf("%s\"%s\":%" PRIu64, i ? "," : "", ring_drop_reason_name((ring_drop_reason_t)i),
               s->dropped[i]);
    printf("},\"in_ring\":%" PRIu64 ",\"in_ring_bytes\":%" PRIu64 ",\"fill_percent\":%.2f",
           s->in_ring, s->bytes_used, fill);
    printf(",\"redelivered\":%" PRIu64 ",\"resyncs\":%" PRIu64 ",\"producers\":%" PRIu32
           ",\"consumer_pid\":%" PRId32 "}\n",
           s->redelivered, s->resyncs, s->producers, s->consumer_pid);
}

static void print_lanes(const ring_t *r, const char *name, uint32_t nlanes, int json)
{
    if (json)
        printf("{\"name\":\"%s\",\"lanes\":[", name[0] && !strpbrk(name, "\"\\") ? name : "?");
    else
        printf("%-5s %-8s %-8s %-5s %12s %10s %10s %8s\n", "LANE", "PID", "TID", "ALIVE", "WRITTEN",
               "DROPPED", "TRUNCATED", "IN_RING");
    int first = 1;
    for (uint32_t i = 0; i < nlanes; i++) {
        ring_lane_stats_t l;
        if (ring_lane_stats(r, i, &l) != 0 || (l.pid == 0 && l.in_ring == 0))
            continue;
        if (json) {
            printf("%s{\"lane\":%" PRIu32 ",\"pid\":%" PRId32 ",\"tid\":%" PRId32
                   ",\"alive\":%s,\"written\":%" PRIu64 ",\"dropped_full\":%" PRIu64
                   ",\"truncated\":%" PRIu64 ",\"in_ring\":%" PRIu64 "}",
                   first ? "" : ",", i, l.pid, l.tid, l.alive ? "true" : "false", l.written, l.full,
                   l.truncated, l.in_ring);
        } else if (l.pid != 0) {
            printf("%-5" PRIu32 " %-8" PRId32 " %-8" PRId32 " %-5s %12" PRIu64 " %10" PRIu64
                   " %10" PRIu64 " %8" PRIu64 "\n",
                   i, l.pid, l.tid, l.alive ? "yes" : "no", l.written, l.full, l.truncated,
                   l.in_ring);
        } else {
            printf("%-5" PRIu32 " %-8s %-8s %-5s %12s %10s %10s %8" PRIu64 "\n", i, "-", "-", "-",
                   "-", "-", "-", l.in_ring);
        }
        first = 0;
    }
    if (json)
        printf("]}\n");
}

int main(int argc, char **argv)
{
    const char *name = "/shop-trace";
    int json = 0;
    uint64_t lanes = 0, lane_size = 0, max_record = 0;
    char err[512];
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    const char *cmd = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--json") == 0) {
            json = 1;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "shop-ring: %s needs a value (or is unknown)\n", a);
            usage(stderr);
            return 1;
        }
        i++;
        if (strcmp(a, "--name") == 0)
            name = v;
        else if (strcmp(a, "--lanes") == 0) {
            if (parse_u64("--lanes", v, &lanes))
                return 1;
        } else if (strcmp(a, "--lane-size") == 0) {
            if (parse_u64("--lane-size", v, &lane_size))
                return 1;
        } else if (strcmp(a, "--max-record") == 0) {
            if (parse_u64("--max-record", v, &max_record))
                return 1;
        } else {
            fprintf(stderr, "shop-ring: unknown option %s\n", a);
            usage(stderr);
            return 1;
        }
    }
    if (strcmp(cmd, "stat") == 0 || strcmp(cmd, "lanes") == 0) {
        ring_t *r;
        int rc = ring_open(name, NULL, false, &r, err, sizeof err);
        if (rc == -ENOENT) {
            fprintf(stderr, "shop-ring: %s\n", err);
            return 2;
        }
        if (rc != 0) {
            fprintf(stderr, "shop-ring: %s\n", err);
            return 1;
        }
        ring_stats_t s;
        ring_stats(r, &s);
        if (strcmp(cmd, "lanes") == 0)
            print_lanes(r, name, s.geometry.lanes, json);
        else if (json)
            print_json(name, &s);
        else
            print_human(name, &s);
        ring_close(r);
        return 0;
    }
    if (strcmp(cmd, "create") == 0) {
        if (lanes > UINT32_MAX || max_record > UINT32_MAX) {
            fprintf(stderr, "shop-ring: --lanes/--max-record out of range\n");
            return 1;
        }
        ring_geometry_t g = {.lanes = (uint32_t)lanes,
                             .max_record = (uint32_t)max_record,
                             .lane_size = lane_size};
        ring_t *r;
        int rc = ring_open(name, &g, true, &r, err, sizeof err);
        if (rc != 0) {
            fprintf(stderr, "shop-ring: %s\n", err);
            return 1;
        }
        printf("ring %s: lanes=%" PRIu32 " lane_size=%" PRIu64 " max_record=%" PRIu32 "\n", name,
               g.lanes, g.lane_size, g.max_record);
        ring_close(r);
        return 0;
    }
    if (strcmp(cmd, "unlink") == 0) {
        int rc = ring_unlink(name);
        if (rc == -ENOENT) {
            fprintf(stderr, "shop-ring: ring %s does not exist\n", name);
            return 2;
        }
        if (rc != 0) {
            fprintf(stderr, "shop-ring: shm_unlink(%s): %s\n", name, strerror(-rc));
            return 1;
        }
        return 0;
    }
    fprintf(stderr, "shop-ring: unknown command %s\n", cmd);
    usage(stderr);
    return 1;
}
