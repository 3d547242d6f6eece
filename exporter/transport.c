/*
 * exporter/transport.c - the exporter's one real transport: an OTLP
 * TraceService/Export unary call over core/grpc, turned into an
 * exp_result_t (status, RetryInfo delay from grpc-status-details-bin,
 * partial_success from the response).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exporter.h"
#include "grpc.h"

struct st_exp_grpc_t {
    grpc_channel_t *ch;
    bool gzip;
    grpc_md_t md[EXP_HEADERS_MAX];
};

typedef struct {
    exp_done_cb done;
    void *arg;
} exp__call_t;

static void exp__on_unary(const grpc_result_t *res, void *arg)
{
    exp__call_t *call = arg;
    char pmsg[256];
    exp_result_t r = {.status = (int)res->status, .message = res->message ? res->message : "",
                      .retry_delay_ns = -1, .partial_msg = ""};
    if (res->status == GRPC_STATUS_OK) {
        if (otlp_parse_response(res->response, res->response_len, &r.rejected, pmsg, sizeof pmsg) == 0)
            r.partial_msg = pmsg;
    } else {
        r.retry_delay_ns = retry_info_delay_ns(res->details, res->details_len);
    }
    exp_done_cb done = call->done;
    void *darg = call->arg;
    free(call);
    done(darg, &r);
}

int exp_grpc_send(void *tctx, const uint8_t *msg, size_t len, uint64_t timeout_ns, exp_done_cb done, void *arg)
{
    exp_grpc_t *g = tctx;
    exp__call_t *call = malloc(sizeof *call); /* one per Export call, not per span */
    if (!call)
        return -ENOMEM;
    call->done = done;
    call->arg = arg;
    /* Borrowed: the batcher keeps msg (the encoder's buffer) untouched until
     * done runs, retries included. */
    int rc = grpc_call_unary_borrowed(g->ch, EXP_EXPORT_PATH, msg, len, g->gzip, timeout_ns, NULL, 0,
                                      exp__on_unary, call);
    if (rc < 0)
        free(call);
    return rc;
}

int exp_grpc_new(loop_t *loop, const exp_settings_t *s, exp_grpc_t **out, char *err, size_t errlen)
{
    exp_grpc_t *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->gzip = s->gzip;
    for (size_t i = 0; i < s->n_headers; i++)
        g->md[i] = (grpc_md_t){s->hdr_key[i], (const uint8_t *)s->hdr_val[i], strlen(s->hdr_val[i])};
    grpc_channel_opts_t o = {.authority = s->authority, .tls = s->tls, .headers = g->md, .n_headers = s->n_headers};
    int rc = grpc_channel_new(loop, s->host, s->port, &o, &g->ch, err, errlen);
    if (rc < 0) {
        free(g);
        return rc;
    }
    *out = g;
    return 0;
}

void exp_grpc_free(exp_grpc_t *g)
{
    if (!g)
        return;
    grpc_channel_free(g->ch);
    free(g);
}
