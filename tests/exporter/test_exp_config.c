/*
 * tests/exporter/test_exp_config.c - [exporter] keys and OTEL_* variables:
 * bad BSP values are refused naming the variable and the value; the
 * endpoint, headers and precedence rules.
 */
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "exporter.h"
#include "tap.h"

static char err[512];
static exp_settings_t s;

/* Loads defaults (no file) plus the environment; returns 0 or -EINVAL. */
static int load(void)
{
    config_t *c = NULL;
    err[0] = 0;
    int rc = config_load("/dev/null", &c, err, sizeof err);
    if (rc == 0) {
        rc = exp_settings_load(c, &s, err, sizeof err);
        config_free(c);
    }
    return rc;
}

static void refused(const char *var, const char *val)
{
    setenv(var, val, 1);
    int rc = load();
    char want[128];
    snprintf(want, sizeof want, "%s=%s", var, val);
    tap_check(rc != 0 && strstr(err, want), "%s refused: \"%s\"", want, err);
    unsetenv(var);
}

int main(void)
{
    unsetenv("SHOP_CONFIG");
    tap_check(load() == 0, "defaults load: %s", err);
    tap_check(s.batch_max == 512 && s.queue_max == 2048 && s.delay_ns == 5000000000ull &&
                  s.export_timeout_ns == 30000000000ull, "BSP defaults 512 / 2048 / 5000 ms / 30000 ms");
    tap_check(!strcmp(s.host, "127.0.0.1") && s.port == 4317 && !s.tls && !s.gzip && s.timeout_ns == 10000000000ull,
              "endpoint default http://127.0.0.1:4317, 10 s timeout");
    tap_check(s.metrics_port == 9464 && !s.ring_create, "metrics port 9464, ring_attach wait");

    refused("OTEL_BSP_MAX_QUEUE_SIZE", "0");
    refused("OTEL_BSP_MAX_QUEUE_SIZE", "100000");
    refused("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0");
    refused("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "abc");
    refused("OTEL_BSP_SCHEDULE_DELAY", "-1");
    refused("OTEL_BSP_EXPORT_TIMEOUT", "0");
    refused("OTEL_BSP_EXPORT_TIMEOUT", "5s");
    refused("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "brotli");
    refused("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf");
    refused("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json");
    refused("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector.example:4317");
    refused("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://1.2.3.4:1");
    refused("OTEL_EXPORTER_OTLP_TIMEOUT", "0");
    refused("OTEL_EXPORTER_OTLP_HEADERS", "novalue");

    setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096", 1);
    int rc = load();
    tap_check(rc != 0 && strstr(err, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=4096") && strstr(err, "max_queue_size"),
              "batch > queue refused: \"%s\"", err);
    setenv("OTEL_BSP_MAX_QUEUE_SIZE", "8192", 1);
    tap_check(load() == 0 && s.batch_max == 4096 && s.queue_max == 8192, "batch 4096 <= queue 8192 accepted");
    unsetenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE");
    unsetenv("OTEL_BSP_MAX_QUEUE_SIZE");

    /* a file value out of range: file:line in the message */
    char path[] = "/tmp/test_exp_config_XXXXXX";
    int fd = mkstemp(path);
    const char *txt = "[exporter]\nmax_queue_size = 70000\n";
    tap_check(fd >= 0 && write(fd, txt, strlen(txt)) == (ssize_t)strlen(txt), "temp config written");
    close(fd);
    config_t *c = NULL;
    rc = config_load(path, &c, err, sizeof err);
    tap_check(rc != 0 && strstr(err, ":2:") && strstr(err, "70000"), "file value refused with file:line: \"%s\"", err);
    config_free(c);
    fd = open(path, O_WRONLY | O_TRUNC);
    txt = "[exporter]\nmax_export_batch_size = 300\nmax_queue_size = 200\nschedule_delay = 100\n";
    tap_check(write(fd, txt, strlen(txt)) == (ssize_t)strlen(txt), "second config written");
    close(fd);
    c = NULL;
    rc = config_load(path, &c, err, sizeof err);
    rc = rc ? rc : exp_settings_load(c, &s, err, sizeof err);
    tap_check(rc != 0 && strstr(err, "300") && strstr(err, "200") && strstr(err, path),
              "file batch > queue refused naming the file: \"%s\"", err);
    config_free(c);
    setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "100", 1);
    c = NULL;
    rc = config_load(path, &c, err, sizeof err);
    rc = rc ? rc : exp_settings_load(c, &s, err, sizeof err);
    tap_check(rc == 0 && s.batch_max == 100 && s.queue_max == 200 && s.delay_ns == 100000000ull,
              "environment wins over the file (batch 100, queue 200 from the file)");
    config_free(c);
    unsetenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE");
    unlink(path);

    /* endpoint and precedence */
    setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://10.0.0.1:4318", 1);
    tap_check(load() == 0 && !strcmp(s.host, "10.0.0.1") && s.port == 4318 && s.tls, "https:// endpoint -> TLS");
    setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://[::1]:5317/", 1);
    tap_check(load() == 0 && !strcmp(s.host, "::1") && s.port == 5317 && !s.tls,
              "TRACES_ENDPOINT wins over ENDPOINT; IPv6; http:// -> plaintext");
    unsetenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4317", 1);
    setenv("OTEL_EXPORTER_OTLP_INSECURE", "false", 1);
    tap_check(load() == 0 && s.tls, "no scheme, insecure=false -> TLS");
    setenv("OTEL_EXPORTER_OTLP_INSECURE", "true", 1);
    tap_check(load() == 0 && !s.tls, "no scheme, insecure=true -> plaintext");
    unsetenv("OTEL_EXPORTER_OTLP_INSECURE");
    unsetenv("OTEL_EXPORTER_OTLP_ENDPOINT");
    setenv("OTEL_EXPORTER_OTLP_HEADERS", "Api-Key=abc%20d, x-tenant=t1", 1);
    tap_check(load() == 0 && s.n_headers == 2 && !strcmp(s.hdr_key[0], "api-key") &&
                  !strcmp(s.hdr_val[0], "abc d") && !strcmp(s.hdr_key[1], "x-tenant") && !strcmp(s.hdr_val[1], "t1"),
              "headers: lower-cased keys, percent-decoded values");
    unsetenv("OTEL_EXPORTER_OTLP_HEADERS");
    setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip", 1);
    setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2500", 1);
    tap_check(load() == 0 && s.gzip && s.timeout_ns == 2500000000ull, "generic COMPRESSION and TIMEOUT apply");
    setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none", 1);
    tap_check(load() == 0 && !s.gzip, "TRACES_COMPRESSION wins over COMPRESSION");
    return tap_done();
}
