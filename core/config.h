/*
 * core/config.h - the one configuration file of shop-trace (INI, read with
 * Debian's libinih) and its environment overrides.
 *
 * Every key the system knows is declared once, in CONFIG_KEY_MAP below, with
 * its type, default, allowed range and the environment variable that
 * overrides it.  The same table validates files, answers lookups, and prints
 * docs/CONFIG.md (`shop-config doc`), so the docs cannot drift from the code.
 *
 * Precedence: built-in default < file < environment.  SHOP_CONFIG names the
 * file when the caller passes none; otherwise ./shop.conf if present.
 *
 * Errors name the file, line, key, value and reason, for example
 *   shop.conf:7: [ring] lane_size = 1000: must be a power of two between 65536 and 268435456
 * and for the environment
 *   environment SHOP_RING_LANES=0: [ring] lanes must be between 1 and 1024
 */
#ifndef SHOP_CORE_CONFIG_H
#define SHOP_CORE_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "core.h"

/* Types of values. */
typedef enum {
    CONFIG_T_STR,   /* free text, at most `max` bytes */
    CONFIG_T_INT,   /* decimal integer in [min, max] */
    CONFIG_T_SIZE,  /* bytes with optional K/M/G suffix (1024-based), in [min, max] */
    CONFIG_T_POW2,  /* like SIZE, and a power of two */
    CONFIG_T_RATIO, /* decimal fraction in [0, 1] */
    CONFIG_T_BOOL,  /* true/false, yes/no, on/off, 1/0 */
    CONFIG_T_ENUM,  /* one of the '|'-separated words in `choices` */
} config_type_t;

/*
 * X(id, section, key, type, default, min, max, choices, env, help)
 * `env` is the overriding environment variable ("" = SHOP_<SECTION>_<KEY>).
 */
#define CONFIG_KEY_MAP(X)                                                                     \
    X(RING_NAME, "ring", "name", CONFIG_T_STR, "/shop-trace", 2, 255, NULL, "",               \
      "POSIX shared-memory name of the span ring (starts with '/', no other '/')")            \
    X(RING_LANES, "ring", "lanes", CONFIG_T_INT, "64", 1, 1024, NULL, "",                     \
      "number of single-producer lanes; each producing thread holds one")                     \
    X(RING_LANE_SIZE, "ring", "lane_size", CONFIG_T_POW2, "1M", 65536, 268435456, NULL, "",   \
      "bytes of span records each lane holds (power of two); ring = lanes x lane_size")       \
    X(RING_MAX_RECORD, "ring", "max_record", CONFIG_T_SIZE, "16K", 256, 1048576, NULL, "",    \
      "largest span record in bytes (<= lane_size/4); larger spans are truncated, counted")   \
    X(TRACING_SAMPLER, "tracing", "sampler", CONFIG_T_ENUM, "parentbased_always_on", 0, 0,    \
      "always_on|always_off|traceidratio|parentbased_always_on|parentbased_always_off|"      \
      "parentbased_traceidratio", "OTEL_TRACES_SAMPLER",                                     \
      "head sampler, with the OpenTelemetry names")                                          \
    X(TRACING_SAMPLER_ARG, "tracing", "sampler_arg", CONFIG_T_RATIO, "1.0", 0, 0, NULL,       \
      "OTEL_TRACES_SAMPLER_ARG", "sampling ratio for the *traceidratio samplers")            \
    X(TRACING_ENVIRONMENT, "tracing", "deployment_environment", CONFIG_T_STR, "dev", 0, 255,  \
      NULL, "", "resource attribute deployment.environment.name")                            \
    X(TRACING_ATTR_COUNT, "tracing", "attribute_count_limit", CONFIG_T_INT, "128", 0, 4096,   \
      NULL, "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "attributes kept per span (more are counted dropped)") \
    X(TRACING_ATTR_VALUE_LEN, "tracing", "attribute_value_length_limit", CONFIG_T_INT, "0",   \
      0, 1048576, NULL, "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",                            \
      "longest string attribute value kept, in bytes (0 = no limit but the record's)")       \
    X(TRACING_EVENT_COUNT, "tracing", "event_count_limit", CONFIG_T_INT, "128", 0, 4096,      \
      NULL, "OTEL_SPAN_EVENT_COUNT_LIMIT", "events kept per span")                           \
    X(TRACING_LINK_COUNT, "tracing", "link_count_limit", CONFIG_T_INT, "128", 0, 4096,        \
      NULL, "OTEL_SPAN_LINK_COUNT_LIMIT", "links kept per span")                             \
    X(KAFKA_BOOTSTRAP_SERVERS, "kafka", "bootstrap_servers", CONFIG_T_STR, "127.0.0.1:9092", \
      1, 255, NULL, "", "host:port[,host:port...] of the brokers (shop-kafka-mock prints its own)") \
    X(KAFKA_CLIENT_ID, "kafka", "client_id", CONFIG_T_STR, "shop-trace", 1, 255, NULL, "",    \
      "client.id the producer sends (broker logs and quotas)")                               \
    X(KAFKA_TOPIC, "kafka", "topic", CONFIG_T_STR, "order-events", 1, 249, NULL, "",          \
      "topic the outbox relay publishes order events to")                                    \
    X(KAFKA_DELIVERY_TIMEOUT, "kafka", "delivery_timeout", CONFIG_T_INT, "120000", 100,       \
      86400000, NULL, "", "ms a message may wait for the broker's acknowledgement, retries included") \
    X(KAFKA_LINGER, "kafka", "linger", CONFIG_T_INT, "5", 0, 60000, NULL, "",                \
      "ms the producer waits to batch messages (below delivery_timeout)")                    \
    X(KAFKA_RECONNECT_BACKOFF_MAX, "kafka", "reconnect_backoff_max", CONFIG_T_INT, "1000", 10, \
      60000, NULL, "", "ms ceiling of the back-off between reconnects to a broker that is down") \
    X(KAFKA_ACKS, "kafka", "acks", CONFIG_T_ENUM, "all", 0, 0, "all", "",                     \
      "fixed: the idempotent producer needs every in-sync replica's acknowledgement")       \
    X(ORDER_SVC_INVENTORY, "order_svc", "inventory_address", CONFIG_T_STR, "127.0.0.1:9092", 3, \
      255, NULL, "", "numeric-host:port of inventory-svc, called by the order saga")         \
    X(ORDER_SVC_PAYMENT, "order_svc", "payment_address", CONFIG_T_STR, "127.0.0.1:9093", 3,    \
      255, NULL, "", "numeric-host:port of payment-svc, called by the order saga")           \
    X(ORDER_SVC_STOCK_TIMEOUT, "order_svc", "stock_timeout", CONFIG_T_INT, "2000", 10, 600000, \
      NULL, "", "ms one CheckStock/ReduceStock/RestoreStock call may take (grpc-timeout)")   \
    X(ORDER_SVC_PAYMENT_TIMEOUT, "order_svc", "payment_timeout", CONFIG_T_INT, "5000", 10,     \
      600000, NULL, "", "ms one ProcessPayment call may take; keep it above "                \
      "[payment_svc] processor_timeout so payment-svc decides first")                        \
    X(ORDER_SVC_RECOVERY_AGE, "order_svc", "recovery_age", CONFIG_T_INT, "60000", 1000,       \
      86400000, NULL, "", "ms after which a still-pending order is resumed by the recovery " \
      "sweep (at start-up, then every recovery_age); must exceed the longest saga")          \
    X(ORDER_SVC_RELAY_POLL, "order_svc", "relay_poll_interval", CONFIG_T_INT, "200", 1,       \
      600000, NULL, "", "ms between two polls of the outbox by the Kafka relay")             \
    X(ORDER_SVC_RELAY_BATCH, "order_svc", "relay_batch", CONFIG_T_INT, "100", 1, 10000, NULL, \
      "", "outbox rows per poll, and most relay messages awaiting acknowledgement")          \
    X(EXPORTER_ENDPOINT, "exporter", "endpoint", CONFIG_T_STR, "http://127.0.0.1:4317", 1, 255, \
      NULL, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",                                            \
      "OTLP/gRPC receiver, http[s]://numeric-ip:port (OTEL_EXPORTER_OTLP_ENDPOINT too)")     \
    X(EXPORTER_PROTOCOL, "exporter", "protocol", CONFIG_T_ENUM, "grpc", 0, 0, "grpc",        \
      "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTLP transport; only grpc is implemented")      \
    X(EXPORTER_COMPRESSION, "exporter", "compression", CONFIG_T_ENUM, "none", 0, 0,          \
      "none|gzip", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "request compression (gzip: ISA-L igzip)")\
    X(EXPORTER_TIMEOUT, "exporter", "timeout", CONFIG_T_INT, "10000", 1, 600000, NULL,       \
      "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "ms one Export call may take (grpc-timeout)")     \
    X(EXPORTER_HEADERS, "exporter", "headers", CONFIG_T_STR, "", 0, 255, NULL,               \
      "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "metadata on every call: key=value,key=value")    \
    X(EXPORTER_INSECURE, "exporter", "insecure", CONFIG_T_BOOL, "false", 0, 0, NULL,         \
      "OTEL_EXPORTER_OTLP_TRACES_INSECURE", "plaintext h2c when the endpoint has no scheme") \
    X(EXPORTER_BATCH, "exporter", "max_export_batch_size", CONFIG_T_INT, "512", 1, 65536,     \
      NULL, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "most spans per Export call (<= max_queue_size)") \
    X(EXPORTER_QUEUE, "exporter", "max_queue_size", CONFIG_T_INT, "2048", 1, 65536, NULL,     \
      "OTEL_BSP_MAX_QUEUE_SIZE", "most spans taken from the ring and not yet released")      \
    X(EXPORTER_CONCURRENT, "exporter", "max_concurrent_exports", CONFIG_T_INT, "4", 1, 64,   \
      NULL, "", "most Export calls in flight at once (1: one at a time, as OTel's BSP)")      \
    X(EXPORTER_DELAY, "exporter", "schedule_delay", CONFIG_T_INT, "5000", 0, 3600000, NULL,   \
      "OTEL_BSP_SCHEDULE_DELAY", "ms between two exports when batches do not fill")          \
    X(EXPORTER_EXPORT_TIMEOUT, "exporter", "export_timeout", CONFIG_T_INT, "30000", 1,        \
      3600000, NULL, "OTEL_BSP_EXPORT_TIMEOUT", "ms a batch may take, retries included")     \
    X(EXPORTER_METRICS_ADDRESS, "exporter", "metrics_address", CONFIG_T_STR, "0.0.0.0", 2,    \
      63, NULL, "", "numeric address /metrics listens on")                                    \
    X(EXPORTER_METRICS_PORT, "exporter", "metrics_port", CONFIG_T_INT, "9464", 0, 65535,      \
      NULL, "", "port of /metrics (0 = any free port, logged)")                               \
    X(EXPORTER_RING_ATTACH, "exporter", "ring_attach", CONFIG_T_ENUM, "wait", 0, 0,          \
      "wait|create", "", "wait for a producer to create the ring, or create it")              \
    X(POSTGRES_HOST, "postgres", "host", CONFIG_T_STR, "127.0.0.1", 1, 255, NULL, "",         \
      "PostgreSQL server host name, address, or Unix socket directory (starts with '/')")    \
    X(POSTGRES_PORT, "postgres", "port", CONFIG_T_INT, "5432", 1, 65535, NULL, "",            \
      "PostgreSQL server port")                                                              \
    X(POSTGRES_DBNAME, "postgres", "dbname", CONFIG_T_STR, "shop", 1, 63, NULL, "",           \
      "database holding the shop tables (docs/DATA.md)")                                     \
    X(POSTGRES_USER, "postgres", "user", CONFIG_T_STR, "shop", 1, 63, NULL, "",               \
      "role to connect as; the password comes from PGPASSWORD or ~/.pgpass, never this file") \
    X(POSTGRES_POOL_SIZE, "postgres", "pool_size", CONFIG_T_INT, "4", 1, 256, NULL, "",       \
      "connections each service process keeps open")                                         \
    X(POSTGRES_PIPELINE_DEPTH, "postgres", "pipeline_depth", CONFIG_T_INT, "8", 1, 64, NULL,  \
      "", "statements in flight on one connection (libpq pipeline mode; 1 = one at a time)") \
    X(POSTGRES_STATEMENT_TIMEOUT, "postgres", "statement_timeout", CONFIG_T_INT, "5000", 0,   \
      3600000, NULL, "", "ms the server lets one statement run (0 = no limit)")              \
    X(POSTGRES_CONNECT_TIMEOUT, "postgres", "connect_timeout", CONFIG_T_INT, "5000", 100,     \
      600000, NULL, "", "ms one connection attempt may take")                                 \
    X(REDIS_HOST, "redis", "host", CONFIG_T_STR, "127.0.0.1", 2, 63, NULL, "",                \
      "numeric address of the Redis server (user-svc's cache; no DNS on the loop)")         \
    X(REDIS_PORT, "redis", "port", CONFIG_T_INT, "6379", 1, 65535, NULL, "", "Redis port")   \
    X(REDIS_COMMAND_TIMEOUT, "redis", "command_timeout", CONFIG_T_INT, "50", 1, 60000, NULL,  \
      "", "ms a cache command may take before the caller falls back to PostgreSQL")         \
    X(REDIS_CONNECT_TIMEOUT, "redis", "connect_timeout", CONFIG_T_INT, "1000", 10, 600000,    \
      NULL, "", "ms one connection attempt may take (reconnects back off up to 2 s)")        \
    X(USER_SVC_ADDRESS, "user_svc", "address", CONFIG_T_STR, "0.0.0.0", 2, 63, NULL, "",      \
      "numeric address user-svc's gRPC server listens on")                                   \
    X(USER_SVC_PORT, "user_svc", "port", CONFIG_T_INT, "9091", 0, 65535, NULL, "",            \
      "gRPC port of user-svc (0 = any free port, printed at start-up)")                      \
    X(USER_SVC_CACHE_TTL, "user_svc", "cache_ttl", CONFIG_T_INT, "300", 1, 604800, NULL, "",  \
      "seconds a user read from PostgreSQL stays in the Redis cache")                        \
    X(INVENTORY_SVC_ADDRESS, "inventory_svc", "address", CONFIG_T_STR, "0.0.0.0", 2, 63, NULL, \
      "", "numeric address inventory-svc's gRPC server listens on")                          \
    X(INVENTORY_SVC_PORT, "inventory_svc", "port", CONFIG_T_INT, "9092", 0, 65535, NULL, "",  \
      "gRPC port of inventory-svc (0 = any free port, printed at start-up)")                 \
    X(ORDER_SVC_ADDRESS, "order_svc", "address", CONFIG_T_STR, "0.0.0.0", 2, 63, NULL, "",    \
      "numeric address order-svc's gRPC server listens on")                                  \
    X(ORDER_SVC_PORT, "order_svc", "port", CONFIG_T_INT, "9090", 0, 65535, NULL, "",          \
      "gRPC port of order-svc (0 = any free port, printed at start-up)")                     \
    X(PAYMENT_SVC_ADDRESS, "payment_svc", "address", CONFIG_T_STR, "0.0.0.0", 2, 63, NULL, "", \
      "numeric address payment-svc's gRPC server listens on")                                \
    X(PAYMENT_SVC_PORT, "payment_svc", "port", CONFIG_T_INT, "9093", 0, 65535, NULL, "",      \
      "gRPC port of payment-svc (0 = any free port, printed at start-up)")                   \
    X(PAYMENT_SVC_PROCESSOR_ADDRESS, "payment_svc", "processor_address", CONFIG_T_STR,      \
      "127.0.0.1", 2, 63, NULL, "", "numeric address of the payment processor (shop-payment-sim)") \
    X(PAYMENT_SVC_PROCESSOR_PORT, "payment_svc", "processor_port", CONFIG_T_INT, "9099", 1,    \
      65535, NULL, "", "HTTP port of the payment processor")                                  \
    X(PAYMENT_SVC_PROCESSOR_TIMEOUT, "payment_svc", "processor_timeout", CONFIG_T_INT, "2000", \
      10, 600000, NULL, "", "ms one charge may take at the processor (connect included); "   \
      "then the outcome is unknown and the call answers UNAVAILABLE")                         \
    X(PAYMENT_SVC_PROCESSOR_CONNS, "payment_svc", "processor_connections", CONFIG_T_INT, "16", \
      1, 1024, NULL, "", "keep-alive connections payment-svc keeps to the processor")        \
    X(PAYMENT_SIM_ADDRESS, "payment_sim", "address", CONFIG_T_STR, "127.0.0.1", 2, 63, NULL,  \
      "", "numeric address shop-payment-sim listens on")                                     \
    X(PAYMENT_SIM_PORT, "payment_sim", "port", CONFIG_T_INT, "9099", 0, 65535, NULL, "",      \
      "HTTP port of shop-payment-sim (0 = any free port, printed at start-up)")              \
    X(PAYMENT_SIM_LATENCY, "payment_sim", "latency_ms", CONFIG_T_INT, "30", 0, 600000, NULL,  \
      "", "fixed ms before the simulator answers a charge")                                  \
    X(PAYMENT_SIM_JITTER, "payment_sim", "jitter_ms", CONFIG_T_INT, "20", 0, 600000, NULL,    \
      "", "extra ms, 0..jitter_ms, drawn per order id from the seed")                         \
    X(PAYMENT_SIM_DECLINE_RATE, "payment_sim", "decline_rate", CONFIG_T_RATIO, "0.05", 0, 0,  \
      NULL, "", "share of charges declined (402), chosen per order id from the seed")        \
    X(PAYMENT_SIM_ERROR_RATE, "payment_sim", "error_rate", CONFIG_T_RATIO, "0.02", 0, 0,      \
      NULL, "", "share of charges answered 500, chosen per order id from the seed")          \
    X(PAYMENT_SIM_HANG_RATE, "payment_sim", "hang_rate", CONFIG_T_RATIO, "0", 0, 0, NULL, "", \
      "share of charges never answered (the caller times out), per order id")                \
    X(PAYMENT_SIM_SEED, "payment_sim", "seed", CONFIG_T_INT, "1", 0, 2147483647, NULL, "",    \
      "seed of the per-order-id draws: same seed and order id, same outcome and latency")    \
    X(GATEWAY_ADDRESS, "gateway", "address", CONFIG_T_STR, "0.0.0.0", 2, 63, NULL, "",        \
      "numeric address the gateway's HTTP server listens on")                                \
    X(GATEWAY_PORT, "gateway", "port", CONFIG_T_INT, "8080", 0, 65535, NULL, "",              \
      "HTTP port of the gateway (0 = any free port, printed at start-up)")                   \
    X(GATEWAY_USER_SVC, "gateway", "user_svc", CONFIG_T_STR, "127.0.0.1:9091", 3, 63, NULL, "", \
      "user-svc's gRPC address as numeric IP:PORT")                                          \
    X(GATEWAY_ORDER_SVC, "gateway", "order_svc", CONFIG_T_STR, "127.0.0.1:9090", 3, 63, NULL,  \
      "", "order-svc's gRPC address as numeric IP:PORT")                                     \
    X(GATEWAY_UPSTREAM_TIMEOUT, "gateway", "upstream_timeout", CONFIG_T_INT, "3000", 10,      \
      600000, NULL, "", "ms deadline of each gRPC call to user-svc/order-svc (504 past it)")  \
    X(GATEWAY_JWT_SECRET, "gateway", "jwt_secret", CONFIG_T_STR, "shop-trace-dev-secret", 16, \
      255, NULL, "", "HS256 key of the bearer tokens (change it outside demos)")             \
    X(GATEWAY_TOKEN_TTL, "gateway", "token_ttl", CONFIG_T_INT, "3600", 1, 31536000, NULL, "", \
      "seconds a token printed by `gateway --token ID` stays valid")                        \
    X(GATEWAY_RATE_USER, "gateway", "rate_user", CONFIG_T_INT, "100", 0, 10000000, NULL, "",  \
      "requests/s one authenticated user may make (token bucket refill; 0 = no limit)")      \
    X(GATEWAY_BURST_USER, "gateway", "burst_user", CONFIG_T_INT, "200", 1, 10000000, NULL,    \
      "", "token bucket size per user (requests allowed at once)")                           \
    X(GATEWAY_RATE_ADDR, "gateway", "rate_addr", CONFIG_T_INT, "1000", 0, 10000000, NULL, "", \
      "requests/s one client address may make on /api/* (0 = no limit)")                    \
    X(GATEWAY_BURST_ADDR, "gateway", "burst_addr", CONFIG_T_INT, "2000", 1, 10000000, NULL,   \
      "", "token bucket size per client address")                                            \
    X(GATEWAY_RATE_ENTRIES, "gateway", "rate_entries", CONFIG_T_POW2, "4096", 64, 16777216,   \
      NULL, "", "buckets kept per limiter (power of two; the least recently used goes)")     \
    X(GATEWAY_MAX_CONNS, "gateway", "max_conns", CONFIG_T_INT, "10000", 1, 1000000, NULL, "", \
      "open client connections; more are answered 503 and closed")                          \
    X(GATEWAY_MAX_HEADER_BYTES, "gateway", "max_header_bytes", CONFIG_T_SIZE, "8K", 256,      \
      65536, NULL, "", "request line + headers; more is 431")                                 \
    X(GATEWAY_MAX_HEADERS, "gateway", "max_headers", CONFIG_T_INT, "64", 4, 256, NULL, "",    \
      "header lines per request; more is 431")                                               \
    X(GATEWAY_MAX_BODY, "gateway", "max_body", CONFIG_T_SIZE, "64K", 0, 16777216, NULL, "",   \
      "request body bytes (Content-Length); more is 413")                                    \
    X(GATEWAY_READ_TIMEOUT, "gateway", "read_timeout", CONFIG_T_INT, "10000", 10, 600000,     \
      NULL, "", "ms from a request's first byte to its last; slower is 408")                 \
    X(GATEWAY_IDLE_TIMEOUT, "gateway", "idle_timeout", CONFIG_T_INT, "60000", 10, 3600000,    \
      NULL, "", "ms a keep-alive connection may sit idle before it is closed")               \
    X(GATEWAY_HEALTH_UPSTREAMS, "gateway", "health_upstreams", CONFIG_T_BOOL, "true", 0, 0,   \
      NULL, "", "GET /api/health asks user-svc and order-svc (grpc.health.v1); false answers " \
      "from the gateway alone (liveness; the HTTP-layer benchmark)")                          \
    X(SERVICE_SHUTDOWN_GRACE, "service", "shutdown_grace", CONFIG_T_INT, "10000", 0, 600000,  \
      NULL, "", "ms a service lets calls in flight finish after SIGTERM before resetting them")

typedef enum {
#define CONFIG__ENUM(id, ...) CONFIG_##id,
    CONFIG_KEY_MAP(CONFIG__ENUM)
#undef CONFIG__ENUM
    CONFIG__COUNT
} config_id_t;

typedef struct st_config_t config_t;

/* Loads `path` (NULL: $SHOP_CONFIG, else ./shop.conf if it exists, else
 * defaults only), then applies environment overrides, then checks keys that
 * depend on each other (ring geometry).  Unknown sections and keys are
 * errors.  Returns 0 and *out (free with config_free), or -EINVAL (bad
 * value; message in err), -ENOENT/-EACCES (file), -ENOMEM. */
int config_load(const char *path, config_t **out, char *err, size_t errlen);
void config_free(config_t *c);

/* Effective values; the type must match the key's (checked by assert). */
const char *config_str(const config_t *c, config_id_t id);
int64_t config_int(const config_t *c, config_id_t id); /* INT, SIZE, POW2 */
double config_ratio(const config_t *c, config_id_t id);
bool config_bool(const config_t *c, config_id_t id);

/* Any value as text, as written (or its default). */
const char *config_text(const config_t *c, config_id_t id);

/* Where a value came from: "default", "FILE:LINE" or "environment NAME". */
const char *config_origin(const config_t *c, config_id_t id);
/* The file that was read, or NULL for defaults only. */
const char *config_path(const config_t *c);

/* Finds a key by "section.key"; returns -1 if unknown. */
int config_lookup(const char *dotted);
/* Name parts of a key id. */
const char *config_section(config_id_t id);
const char *config_key(config_id_t id);

/* Writes the effective configuration, one "section.key = value  (origin)"
 * per line, for the start-up log. */
void config_dump(const config_t *c, void (*line)(void *u, const char *s), void *u);

/* Writes docs/CONFIG.md's key table (markdown) to `out`. */
void config_write_doc(void *file);

/* What trace_init needs, taken from the configuration: ring name and
 * geometry, sampler, span limits and deployment environment.  The OTEL_*
 * variables keep their precedence over the file (OTEL_ATTRIBUTE_COUNT_LIMIT
 * and the other general limits included).  The pointers in *opt point into
 * *store and *c, which must outlive the trace_init call.  Service name and
 * version are the caller's.  Returns 0 or -EINVAL with the reason in err. */
typedef struct st_config_trace_t {
    ring_geometry_t geometry;
    trace_sampler_t sampler;
    trace_limits_t limits;
} config_trace_t;
int config_trace_options(const config_t *c, config_trace_t *store, trace_options_t *opt, char *err,
                         size_t errlen);

#endif
