/*
 * shop-config - checks and prints shop-trace's configuration.
 *
 *   shop-config check [--config FILE]     validate file + environment; exit 1 with the reason
 *   shop-config get ring.lane_size        print one effective value
 *   shop-config dump  [--config FILE]     every key, its value and where it came from
 *   shop-config doc                       the key table of docs/CONFIG.md (markdown)
 *
 * Without --config: $SHOP_CONFIG, else ./shop.conf, else built-in defaults.
 */
#include <stdio.h>
#include <string.h>

#include "config.h"

static void usage(FILE *f)
{
    fputs("usage: shop-config check|dump|doc [--config FILE]\n"
          "       shop-config get SECTION.KEY [--config FILE]\n",
          f);
}

static void print_line(void *u, const char *s)
{
    (void)u;
    puts(s);
}

int main(int argc, char **argv)
{
    const char *path = NULL, *cmd = NULL, *key = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!cmd)
            cmd = argv[i];
        else if (!key && !strcmp(cmd, "get"))
            key = argv[i];
        else {
            fprintf(stderr, "shop-config: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!cmd) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(cmd, "doc")) {
        config_write_doc(stdout);
        return 0;
    }
    if (strcmp(cmd, "check") && strcmp(cmd, "dump") && strcmp(cmd, "get")) {
        fprintf(stderr, "shop-config: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
    }
    int id = -1;
    if (!strcmp(cmd, "get")) {
        if (!key || (id = config_lookup(key)) < 0) {
            fprintf(stderr, "shop-config: unknown key '%s' (see docs/CONFIG.md)\n", key ? key : "");
            return 2;
        }
    }
    char err[512];
    config_t *c;
    if (config_load(path, &c, err, sizeof err) != 0) {
        fprintf(stderr, "shop-config: %s\n", err);
        return 1;
    }
    if (!strcmp(cmd, "check"))
        printf("%s: ok\n", config_path(c) ? config_path(c) : "built-in defaults");
    else if (!strcmp(cmd, "dump"))
        config_dump(c, print_line, NULL);
    else
        puts(config_text(c, (config_id_t)id));
    config_free(c);
    return 0;
}
