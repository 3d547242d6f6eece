/*
 * tools/kafka/shop-kafka-mock.c - shop-kafka-mock: the embedded default
 * Kafka broker.  It runs librdkafka's mock cluster (an in-process fake of
 * the Kafka protocol: produce, fetch, metadata, idempotent producer ids,
 * consumer groups) on loopback ports and keeps it alive until SIGTERM or
 * SIGINT, so the services can talk to "a Kafka" without a JVM.
 *
 * Usage:
 *   shop-kafka-mock                                   # 1 broker, order-events x 4
 *   shop-kafka-mock --brokers 3 --partitions 8 --topic order-events \
 *                   --bootstrap-file var/run/kafka.bootstrap
 *   kill -USR1 <pid>   # every broker down (connections closed, new ones refused)
 *   kill -USR2 <pid>   # every broker up again
 *   kill -TERM <pid>   # exit 0
 *
 * Output on stdout, one line each, flushed: first the bootstrap servers
 * ("127.0.0.1:41233,127.0.0.1:35119"), then "down" or "up" after each
 * control signal took effect (tests wait for these lines).  The bootstrap
 * file, when given, is written atomically (temporary file + rename) once the
 * topic exists, so a reader that sees it can connect at once.
 *
 * Limits: the mock keeps every message in memory and is not a real broker
 * (no persistence, no replication traffic); the e2e suite uses Apache Kafka
 * (tools/kafka/kafka-kraft.sh) for that.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: shop-kafka-mock [--brokers N] [--partitions P] [--topic NAME]\n"
               "                       [--bootstrap-file FILE]\n"
               "SIGUSR1: brokers down, SIGUSR2: brokers up, SIGTERM/SIGINT: exit 0\n");
}

static int parse_int(const char *opt, const char *s, int lo, int hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "shop-kafka-mock: %s %s: must be between %d and %d\n", opt, s, lo, hi);
        exit(2);
    }
    return (int)v;
}

static int write_file_atomic(const char *path, const char *text)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return -ENAMETOOLONG;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -errno;
    int bad = fprintf(f, "%s\n", text) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        int e = errno ? errno : EIO;
        unlink(tmp);
        return -e;
    }
    return 0;
}

static void set_brokers(rd_kafka_mock_cluster_t *mc, int n, int up)
{
    for (int id = 1; id <= n; id++) { /* the mock numbers brokers 1..n */
        rd_kafka_resp_err_t e = up ? rd_kafka_mock_broker_set_up(mc, id)
                                   : rd_kafka_mock_broker_set_down(mc, id);
        if (e)
            fprintf(stderr, "shop-kafka-mock: broker %d %s: %s\n", id, up ? "up" : "down",
                    rd_kafka_err2str(e));
    }
    printf("%s\n", up ? "up" : "down");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    int brokers = 1, partitions = 4;
    const char *topic = "order-events", *bootstrap_file = NULL;
    static const struct option opts[] = {
        {"brokers", required_argument, NULL, 'b'},
        {"partitions", required_argument, NULL, 'p'},
        {"topic", required_argument, NULL, 't'},
        {"bootstrap-file", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    for (int c; (c = getopt_long(argc, argv, "b:p:t:f:h", opts, NULL)) != -1;) {
        switch (c) {
        case 'b': brokers = parse_int("--brokers", optarg, 1, 16); break;
        case 'p': partitions = parse_int("--partitions", optarg, 1, 1024); break;
        case 't': topic = optarg; break;
        case 'f': bootstrap_file = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    /* Block the control signals before librdkafka starts its threads, so
     * they inherit the mask and only sigwaitinfo() below takes them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) {
        perror("shop-kafka-mock: pthread_sigmask");
        return 1;
    }

    /* The mock cluster runs on a client instance's threads; a producer
     * handle that never produces is the lightest one. */
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* log_level 4: this handle has no bootstrap.servers on purpose, and
     * librdkafka's notice about that would only confuse a reader. */
    if (rd_kafka_conf_set(conf, "client.id", "shop-kafka-mock", errstr, sizeof errstr) ||
        rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof errstr)) {
        fprintf(stderr, "shop-kafka-mock: conf: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "shop-kafka-mock: rd_kafka_new: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    int rc = 1;
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) {
        fprintf(stderr, "shop-kafka-mock: rd_kafka_mock_cluster_new(%d brokers) failed\n", brokers);
        goto err_rk;
    }
    int rf = brokers < 3 ? brokers : 3;
    rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, topic, partitions, rf);
    if (e) {
        fprintf(stderr, "shop-kafka-mock: create topic %s (%d partitions): %s\n", topic, partitions,
                rd_kafka_err2str(e));
        goto err_mc;
    }
    const char *bs = rd_kafka_mock_cluster_bootstraps(mc);
    if (bootstrap_file) {
        int werr = write_file_atomic(bootstrap_file, bs);
        if (werr) {
            fprintf(stderr, "shop-kafka-mock: write %s: %s\n", bootstrap_file, strerror(-werr));
            goto err_mc;
        }
    }
    fprintf(stderr, "shop-kafka-mock: %d broker(s) at %s, topic %s with %d partition(s), librdkafka %s\n",
            brokers, bs, topic, partitions, rd_kafka_version_str());
    printf("%s\n", bs);
    fflush(stdout);

    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig < 0) {
            if (errno == EINTR)
                continue;
            perror("shop-kafka-mock: sigwaitinfo");
            goto err_file;
        }
        if (sig == SIGUSR1)
            set_brokers(mc, brokers, 0);
        else if (sig == SIGUSR2)
            set_brokers(mc, brokers, 1);
        else
            break; /* SIGTERM, SIGINT */
    }
    rc = 0;
err_file:
    if (bootstrap_file)
        unlink(bootstrap_file);
err_mc:
    rd_kafka_mock_cluster_destroy(mc);
err_rk:
    rd_kafka_destroy(rk);
    return rc;
}
