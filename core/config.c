/*
 * core/config.c - INI configuration with environment overrides.
 *
 * libinih does the INI syntax; this file does meaning: every key is checked
 * against CONFIG_KEY_MAP as it is read, so the first error names the line.
 * inih's handler is not told the line number (Debian builds it without
 * INI_HANDLER_LINENO), so we feed it through our own reader and count lines.
 */
#include "config.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "ring.h"

typedef struct {
    const char *section, *key;
    config_type_t type;
    const char *def;
    int64_t min, max;
    const char *choices;
    const char *env;
    const char *help;
} config__key_t;

static const config__key_t config__keys[CONFIG__COUNT] = {
#define CONFIG__ROW(id, sec, key, type, def, min, max, choices, env, help) \
    {sec, key, type, def, min, max, choices, env, help},
    CONFIG_KEY_MAP(CONFIG__ROW)
#undef CONFIG__ROW
};

#define CONFIG__VALUE_MAX 256
#define CONFIG__ORIGIN_MAX 320

typedef struct {
    char text[CONFIG__VALUE_MAX]; /* the value as written (or the default) */
    int64_t i;                    /* INT, SIZE, POW2, BOOL */
    double d;                     /* RATIO */
    char origin[CONFIG__ORIGIN_MAX];
} config__value_t;

struct st_config_t {
    char *path; /* file read, or NULL */
    config__value_t v[CONFIG__COUNT];
};

/* State threaded through inih. */
typedef struct {
    config_t *cfg;
    FILE *file;
    int line;       /* line most recently handed to inih, 1-based */
    int err_line;   /* line of the first error, 0 if none */
    char *err;
    size_t errlen;
} config__parse_t;

static __attribute__((format(printf, 3, 4))) void config__err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char *config_section(config_id_t id) { return config__keys[id].section; }
const char *config_key(config_id_t id) { return config__keys[id].key; }

int config_lookup(const char *dotted)
{
    for (int i = 0; i < CONFIG__COUNT; i++) {
        size_t sl = strlen(config__keys[i].section);
        if (strncmp(dotted, config__keys[i].section, sl) == 0 && dotted[sl] == '.' &&
            strcmp(dotted + sl + 1, config__keys[i].key) == 0)
            return i;
    }
    return -1;
}

static int config__find(const char *section, const char *key)
{
    for (int i = 0; i < CONFIG__COUNT; i++)
        if (strcmp(config__keys[i].section, section) == 0 && strcmp(config__keys[i].key, key) == 0)
            return i;
    return -1;
}

static bool config__section_known(const char *section)
{
    for (int i = 0; i < CONFIG__COUNT; i++)
        if (strcmp(config__keys[i].section, section) == 0)
            return true;
    return false;
}

/* Parses an integer with an optional 1024-based K/M/G suffix (sizes only).
 * Returns 0, or -1 for anything else (signs on sizes, junk, overflow). */
static int config__parse_int(const char *s, bool size, int64_t *out)
{
    char *end;
    if (!*s || isspace((unsigned char)*s))
        return -1;
    if (size && !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s)
        return -1;
    int64_t mul = 1;
    if (size && *end) {
        switch (toupper((unsigned char)*end)) {
        case 'K': mul = 1024; break;
        case 'M': mul = 1024 * 1024; break;
        case 'G': mul = 1024 * 1024 * 1024; break;
        default: return -1;
        }
        end++;
        if (toupper((unsigned char)*end) == 'I' && toupper((unsigned char)end[1]) == 'B')
            end += 2; /* "KiB" */
        else if (toupper((unsigned char)*end) == 'B')
            end++;
    }
    if (*end)
        return -1;
    if (v > INT64_MAX / mul)
        return -1;
    *out = (int64_t)v * mul;
    return 0;
}

/* Checks and stores one value.  On error writes "REASON" (no location). */
static int config__set(config_t *c, int id, const char *value, char *why, size_t whylen)
{
    const config__key_t *k = &config__keys[id];
    config__value_t *v = &c->v[id];
    int64_t i = 0;
    double d = 0;

    if (strlen(value) >= CONFIG__VALUE_MAX) {
        config__err(why, whylen, "value longer than %d bytes", CONFIG__VALUE_MAX - 1);
        return -1;
    }
    switch (k->type) {
    case CONFIG_T_STR:
        if ((int64_t)strlen(value) < k->min || (int64_t)strlen(value) > k->max) {
            config__err(why, whylen, "must be %" PRId64 " to %" PRId64 " bytes long", k->min, k->max);
            return -1;
        }
        break;
    case CONFIG_T_INT:
    case CONFIG_T_SIZE:
    case CONFIG_T_POW2:
        if (config__parse_int(value, k->type != CONFIG_T_INT, &i) != 0) {
            config__err(why, whylen, k->type == CONFIG_T_INT ? "must be an integer"
                                                             : "must be a size in bytes (suffix K, M or G allowed)");
            return -1;
        }
        if (i < k->min || i > k->max || (k->type == CONFIG_T_POW2 && (i & (i - 1)) != 0)) {
            config__err(why, whylen, "must be %sbetween %" PRId64 " and %" PRId64,
                        k->type == CONFIG_T_POW2 ? "a power of two " : "", k->min, k->max);
            return -1;
        }
        break;
    case CONFIG_T_RATIO: {
        char *end;
        errno = 0;
        d = strtod(value, &end);
        if (!*value || *end || errno || !(d >= 0.0 && d <= 1.0)) {
            config__err(why, whylen, "must be a number between 0 and 1");
            return -1;
        }
        break;
    }
    case CONFIG_T_BOOL:
        if (!strcasecmp(value, "true") || !strcasecmp(value, "yes") || !strcasecmp(value, "on") || !strcmp(value, "1"))
            i = 1;
        else if (!strcasecmp(value, "false") || !strcasecmp(value, "no") || !strcasecmp(value, "off") || !strcmp(value, "0"))
            i = 0;
        else {
            config__err(why, whylen, "must be true or false");
            return -1;
        }
        break;
    case CONFIG_T_ENUM: {
        size_t n = strlen(value);
        const char *p = k->choices;
        bool found = false;
        while (p && *p) {
            const char *bar = strchr(p, '|');
            size_t len = bar ? (size_t)(bar - p) : strlen(p);
            if (len == n && strncmp(p, value, n) == 0) {
                found = true;
                break;
            }
            p = bar ? bar + 1 : NULL;
        }
        if (!found) {
            config__err(why, whylen, "must be one of %s", k->choices);
            return -1;
        }
        break;
    }
    default:
        /* An unknown type is a programming error in CONFIG_KEY_MAP. */
        abort();
    }
    snprintf(v->text, sizeof v->text, "%s", value);
    v->i = i;
    v->d = d;
    return 0;
}

static int config__handler(void *user, const char *section, const char *name, const char *value)
{
    config__parse_t *ps = user;
    char why[256];
    if (ps->err_line)
        return 1; /* keep only the first error */
    int id = config__find(section, name);
    if (id < 0) {
        if (!config__section_known(section))
            snprintf(why, sizeof why, "unknown section [%s]", section);
        else
            snprintf(why, sizeof why, "unknown key '%s' in [%s]", name, section);
        config__err(ps->err, ps->errlen, "%s:%d: %s", ps->cfg->path, ps->line, why);
        ps->err_line = ps->line;
        return 0;
    }
    if (config__set(ps->cfg, id, value, why, sizeof why) != 0) {
        config__err(ps->err, ps->errlen, "%s:%d: [%s] %s = %s: %s", ps->cfg->path, ps->line, section, name,
                    value, why);
        ps->err_line = ps->line;
        return 0;
    }
    snprintf(ps->cfg->v[id].origin, CONFIG__ORIGIN_MAX, "%s:%d", ps->cfg->path, ps->line);
    return 1;
}

/* inih reader that counts lines, so errors can say where they are. */
static char *config__reader(char *str, int num, void *stream)
{
    config__parse_t *ps = stream;
    char *r = fgets(str, num, ps->file);
    if (r)
        ps->line++;
    return r;
}

static void config__env_name(int id, char *buf, size_t len)
{
    const config__key_t *k = &config__keys[id];
    if (k->env && *k->env) {
        snprintf(buf, len, "%s", k->env);
        return;
    }
    snprintf(buf, len, "SHOP_%s_%s", k->section, k->key);
    for (char *p = buf; *p; p++)
        *p = (char)toupper((unsigned char)*p);
}

static int config__apply_env(config_t *c, char *err, size_t errlen)
{
    char name[128], why[256];
    for (int id = 0; id < CONFIG__COUNT; id++) {
        config__env_name(id, name, sizeof name);
        const char *val = getenv(name);
        if (!val)
            continue;
        if (config__set(c, id, val, why, sizeof why) != 0) {
            config__err(err, errlen, "environment %s=%s: [%s] %s %s", name, val, config__keys[id].section,
                        config__keys[id].key, why);
            return -EINVAL;
        }
        snprintf(c->v[id].origin, CONFIG__ORIGIN_MAX, "environment %s", name);
    }
    return 0;
}

/* Cross-key rules: the ring geometry as a whole (ipc/ owns the rules). */
static int config__check_ring(config_t *c, char *err, size_t errlen)
{
    ring_geometry_t g = {
        .lanes = (uint32_t)c->v[CONFIG_RING_LANES].i,
        .max_record = (uint32_t)c->v[CONFIG_RING_MAX_RECORD].i,
        .lane_size = (uint64_t)c->v[CONFIG_RING_LANE_SIZE].i,
    };
    char why[256];
    const char *name = c->v[CONFIG_RING_NAME].text;
    if (name[0] != '/' || strchr(name + 1, '/')) {
        config__err(err, errlen, "%s: [ring] name = %s: must start with '/' and contain no other '/'",
                    c->v[CONFIG_RING_NAME].origin, name);
        return -EINVAL;
    }
    if (ring_geometry_check(&g, why, sizeof why) != 0) {
        /* ring_geometry_check's message starts with the key it blames; point
         * at that key's line. */
        config_id_t at = CONFIG_RING_MAX_RECORD;
        if (!strncmp(why, "ring.lanes=", 11))
            at = CONFIG_RING_LANES;
        else if (!strncmp(why, "ring.lane_size=", 15))
            at = CONFIG_RING_LANE_SIZE;
        config__err(err, errlen, "%s: %s", c->v[at].origin, why);
        return -EINVAL;
    }
    return 0;
}

int config_load(const char *path, config_t **out, char *err, size_t errlen)
{
    config_t *c = calloc(1, sizeof *c);
    int rc;
    if (!c)
        return -ENOMEM;
    for (int id = 0; id < CONFIG__COUNT; id++) {
        char why[256];
        if (config__set(c, id, config__keys[id].def, why, sizeof why) != 0) {
            /* A default outside its own range is a bug in CONFIG_KEY_MAP. */
            fprintf(stderr, "config: built-in default of %s.%s invalid: %s\n", config__keys[id].section,
                    config__keys[id].key, why);
            abort();
        }
        snprintf(c->v[id].origin, CONFIG__ORIGIN_MAX, "default");
    }
    if (!path)
        path = getenv("SHOP_CONFIG");
    if (!path && access("shop.conf", F_OK) == 0)
        path = "shop.conf";
    if (path) {
        config__parse_t ps = {.cfg = c, .err = err, .errlen = errlen};
        c->path = strdup(path);
        if (!c->path) {
            rc = -ENOMEM;
            goto err;
        }
        ps.file = fopen(path, "r");
        if (!ps.file) {
            rc = -errno;
            config__err(err, errlen, "config file %s: %s", path, strerror(errno));
            goto err;
        }
        int r = ini_parse_stream(config__reader, &ps, config__handler, &ps);
        fclose(ps.file);
        if (ps.err_line) {
            rc = -EINVAL;
            goto err;
        }
        if (r != 0) {
            /* A syntax error inih found itself (no '=' or ']'): r is its line. */
            config__err(err, errlen, "%s:%d: syntax error (expected [section] or key = value)", path,
                        r > 0 ? r : ps.line);
            rc = -EINVAL;
            goto err;
        }
    }
    if ((rc = config__apply_env(c, err, errlen)) != 0)
        goto err;
    if ((rc = config__check_ring(c, err, errlen)) != 0)
        goto err;
    *out = c;
    return 0;
err:
    config_free(c);
    return rc;
}

void config_free(config_t *c)
{
    if (!c)
        return;
    free(c->path);
    free(c);
}

const char *config_str(const config_t *c, config_id_t id)
{
    assert(config__keys[id].type == CONFIG_T_STR || config__keys[id].type == CONFIG_T_ENUM);
    return c->v[id].text;
}

int64_t config_int(const config_t *c, config_id_t id)
{
    assert(config__keys[id].type == CONFIG_T_INT || config__keys[id].type == CONFIG_T_SIZE ||
           config__keys[id].type == CONFIG_T_POW2);
    return c->v[id].i;
}

double config_ratio(const config_t *c, config_id_t id)
{
    assert(config__keys[id].type == CONFIG_T_RATIO);
    return c->v[id].d;
}

bool config_bool(const config_t *c, config_id_t id)
{
    assert(config__keys[id].type == CONFIG_T_BOOL);
    return c->v[id].i != 0;
}

const char *config_text(const config_t *c, config_id_t id) { return c->v[id].text; }
const char *config_origin(const config_t *c, config_id_t id) { return c->v[id].origin; }
const char *config_path(const config_t *c) { return c->path; }

void config_dump(const config_t *c, void (*line)(void *u, const char *s), void *u)
{
    char buf[CONFIG__VALUE_MAX + CONFIG__ORIGIN_MAX + 64];
    for (int id = 0; id < CONFIG__COUNT; id++) {
        snprintf(buf, sizeof buf, "%s.%s = %s  (%s)", config__keys[id].section, config__keys[id].key,
                 c->v[id].text, c->v[id].origin);
        line(u, buf);
    }
}

static const char *config__type_name(const config__key_t *k)
{
    switch (k->type) {
    case CONFIG_T_STR: return "text";
    case CONFIG_T_INT: return "integer";
    case CONFIG_T_SIZE: return "size";
    case CONFIG_T_POW2: return "size, power of two";
    case CONFIG_T_RATIO: return "ratio";
    case CONFIG_T_BOOL: return "boolean";
    case CONFIG_T_ENUM: return "one of";
    }
    abort();
}

void config_write_doc(void *file)
{
    FILE *f = file;
    const char *section = "";
    char env[128];
    for (int id = 0; id < CONFIG__COUNT; id++) {
        const config__key_t *k = &config__keys[id];
        if (strcmp(section, k->section) != 0) {
            section = k->section;
            fprintf(f, "\n### [%s]\n\n| key | type | default | allowed | environment | meaning |\n"
                       "| --- | --- | --- | --- | --- | --- |\n", section);
        }
        config__env_name(id, env, sizeof env);
        fprintf(f, "| `%s` | %s | `%s` | ", k->key, config__type_name(k), k->def);
        switch (k->type) {
        case CONFIG_T_STR: fprintf(f, "%" PRId64 "-%" PRId64 " bytes", k->min, k->max); break;
        case CONFIG_T_ENUM:
            for (const char *p = k->choices; *p; p++)
                fputs(*p == '|' ? ", " : (char[]){*p, 0}, f);
            break;
        case CONFIG_T_RATIO: fputs("0 to 1", f); break;
        case CONFIG_T_BOOL: fputs("true, false", f); break;
        default: fprintf(f, "%" PRId64 " to %" PRId64, k->min, k->max);
        }
        fprintf(f, " | `%s` | %s |\n", env, k->help);
    }
}

/* A limit from the file counts only where no OTEL_* variable set it. */
static uint32_t config__limit(const config_t *c, config_id_t id, uint32_t from_env, const char *general)
{
    const char *origin = c->v[id].origin;
    bool in_file = strcmp(origin, "default") != 0 && strncmp(origin, "environment ", 12) != 0;
    if (in_file && !getenv(config__keys[id].env) && !(general && getenv(general)))
        return (uint32_t)c->v[id].i;
    return from_env;
}

int config_trace_options(const config_t *c, config_trace_t *store, trace_options_t *opt, char *err,
                         size_t errlen)
{
    int rc;
    memset(store, 0, sizeof *store);
    store->geometry.lanes = (uint32_t)c->v[CONFIG_RING_LANES].i;
    store->geometry.lane_size = (uint64_t)c->v[CONFIG_RING_LANE_SIZE].i;
    store->geometry.max_record = (uint32_t)c->v[CONFIG_RING_MAX_RECORD].i;
    /* the sampler keys already carry OTEL_TRACES_SAMPLER[_ARG] (env wins) */
    if ((rc = trace_sampler_parse(c->v[CONFIG_TRACING_SAMPLER].text, c->v[CONFIG_TRACING_SAMPLER_ARG].text,
                                  &store->sampler, err, errlen)) != 0)
        return rc;
    trace_limits_t env;
    if ((rc = trace_limits_from_env(&env, err, errlen)) != 0)
        return rc;
    store->limits = env;
    store->limits.attr_count = config__limit(c, CONFIG_TRACING_ATTR_COUNT, env.attr_count, "OTEL_ATTRIBUTE_COUNT_LIMIT");
    store->limits.attr_value_len = config__limit(c, CONFIG_TRACING_ATTR_VALUE_LEN, env.attr_value_len,
                                                 "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT");
    if (store->limits.attr_value_len == 0) /* the file's 0 means no limit */
        store->limits.attr_value_len = TRACE_LIMIT_UNLIMITED;
    store->limits.event_count = config__limit(c, CONFIG_TRACING_EVENT_COUNT, env.event_count, NULL);
    store->limits.link_count = config__limit(c, CONFIG_TRACING_LINK_COUNT, env.link_count, NULL);
    opt->ring_name = c->v[CONFIG_RING_NAME].text;
    opt->geometry = &store->geometry;
    opt->sampler = &store->sampler;
    opt->limits = &store->limits;
    opt->deployment_env = c->v[CONFIG_TRACING_ENVIRONMENT].text;
    return 0;
}
