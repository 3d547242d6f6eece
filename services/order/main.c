/*
 * services/order/main.c - order-svc: shop.v1.OrderService (the order saga)
 * and the outbox relay to Kafka, on the services/common runtime.
 *
 * Usage:
 *   order-svc --config shop.conf          # listens on [order_svc] address:port
 *   order-svc --config shop.conf --check-config
 *   SHOP_ORDER_SVC_PORT=0 order-svc       # any free port, printed:
 *                                         # "order-svc listening on 0.0.0.0:40123"
 *
 * Keys: [order_svc] address, port, inventory_address, payment_address,
 * stock_timeout, payment_timeout, recovery_age, relay_poll_interval,
 * relay_batch; [postgres] for the pool; [kafka] for the producer
 * (docs/CONFIG.md).  --check-config also applies the rules start-up does:
 * numeric inventory/payment addresses, recovery_age above the longest saga.  SIGTERM: the relay and the recovery sweep stop, calls
 * in flight finish within [service] shutdown_grace, exit 0.  Outbox rows
 * whose acknowledgement had not been recorded are sent again by the next
 * start (at least once).
 */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "kafka.h"
#include "order.h"
#include "shop/v1/order.pb-c.h"
#include "svc.h"

static void on_shutdown(svc_t *svc, void *arg)
{
    (void)svc;
    order_svc_stop(arg);
}

static void options_from_config(const config_t *c, order_options_t *o)
{
    *o = (order_options_t){
        .inventory_address = config_str(c, CONFIG_ORDER_SVC_INVENTORY),
        .payment_address = config_str(c, CONFIG_ORDER_SVC_PAYMENT),
        .stock_timeout_ms = (uint32_t)config_int(c, CONFIG_ORDER_SVC_STOCK_TIMEOUT),
        .payment_timeout_ms = (uint32_t)config_int(c, CONFIG_ORDER_SVC_PAYMENT_TIMEOUT),
        .recovery_age_ms = (uint32_t)config_int(c, CONFIG_ORDER_SVC_RECOVERY_AGE),
        .relay_poll_ms = (uint32_t)config_int(c, CONFIG_ORDER_SVC_RELAY_POLL),
        .relay_batch = (uint32_t)config_int(c, CONFIG_ORDER_SVC_RELAY_BATCH),
        .topic = config_str(c, CONFIG_KAFKA_TOPIC),
    };
}

/* The rules --check-config and start-up apply beyond each key's range. */
static int check_config(const config_t *c, char *err, size_t errlen)
{
    order_options_t o;
    options_from_config(c, &o);
    static const config_id_t addrs[] = {CONFIG_ORDER_SVC_INVENTORY, CONFIG_ORDER_SVC_PAYMENT};
    for (size_t i = 0; i < sizeof addrs / sizeof addrs[0]; i++)
        if (order_address_check(config_str(c, addrs[i])) != 0) {
            snprintf(err, errlen, "%s: [order_svc] %s = %s: want numeric-host:port, e.g. 127.0.0.1:9092",
                     config_origin(c, addrs[i]), config_key(addrs[i]), config_str(c, addrs[i]));
            return -1;
        }
    /* The sweep must never resume a saga that is still running: a saga
     * takes at most CheckStock + ReduceStock + 3 RestoreStock + payment. */
    uint64_t longest = 5ull * o.stock_timeout_ms + o.payment_timeout_ms;
    if (o.recovery_age_ms <= longest) {
        snprintf(err, errlen,
                 "%s: [order_svc] recovery_age = %u: must exceed the longest saga, "
                 "5 x stock_timeout + payment_timeout = %llu ms",
                 config_origin(c, CONFIG_ORDER_SVC_RECOVERY_AGE), o.recovery_age_ms,
                 (unsigned long long)longest);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    svc_options_t so = {.name = "order-svc",
                        .listen_address = CONFIG_ORDER_SVC_ADDRESS,
                        .listen_port = CONFIG_ORDER_SVC_PORT,
                        .needs = SVC_NEED_PG,
                        .check = check_config};
    svc_t *svc;
    int rc = svc_create(&so, argc, argv, &svc);
    if (svc == NULL)
        return rc;
    const config_t *c = svc_config(svc);
    order_options_t o;
    options_from_config(c, &o);
    kafka_options_t ko;
    kafka_options_default(&ko);
    kafka_options_from_config(&ko, c);
    kafka_t *k = NULL;
    order_svc_t *os = NULL;
    char err[256];
    if (kafka_create(svc_loop(svc), &ko, &k, err, sizeof err) != 0) {
        fprintf(stderr, "order-svc: kafka: %s\n", err);
        svc_free(svc);
        return SVC_EXIT_FAIL;
    }
    if (kafka_describe(k, err, sizeof err) > 0)
        svc_log(svc, "kafka: %s", err);
    if (order_svc_create(svc_loop(svc), svc_pg(svc), k, &o, &os, err, sizeof err) != 0) {
        fprintf(stderr, "order-svc: %s\n", err);
        kafka_destroy(k);
        svc_free(svc);
        return SVC_EXIT_CONFIG;
    }
    if (svc_add_service(svc, &shop__v1__order_service__descriptor, order_svc_handlers(), os) != 0 ||
        svc_on_shutdown(svc, on_shutdown, os) != 0 || order_svc_start(os) != 0) {
        fprintf(stderr, "order-svc: start-up failed\n");
        order_svc_free(os);
        kafka_destroy(k);
        svc_free(svc);
        return SVC_EXIT_FAIL;
    }
    rc = svc_run(svc);
    order_counters_t n;
    order_svc_counters(os, &n);
    svc_log(svc,
            "orders created %llu completed %llu failed %llu replayed %llu conflicts %llu "
            "recovered %llu; relay polls %llu produced %llu sent %llu failed %llu",
            (unsigned long long)n.created, (unsigned long long)n.completed,
            (unsigned long long)n.failed, (unsigned long long)n.replayed,
            (unsigned long long)n.conflicts, (unsigned long long)n.recovered,
            (unsigned long long)n.relay_polls, (unsigned long long)n.relay_produced,
            (unsigned long long)n.relay_sent, (unsigned long long)n.relay_failed);
    order_svc_free(os); /* detaches in-flight relay rows before the purge */
    kafka_destroy(k);
    svc_free(svc);
    return rc;
}
