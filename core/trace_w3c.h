/*
 * core/trace_w3c.h - internals of the W3C Trace Context and Baggage codecs
 * (core/trace_w3c.c).  The public API is in core.h.
 */
#ifndef SHOP_CORE_TRACE_W3C_H
#define SHOP_CORE_TRACE_W3C_H

#include <stdbool.h>
#include <stddef.h>

/* tracestate key grammar (simple-key / multi-tenant-key). */
bool trace_w3c__ts_key_ok(const char *k, size_t n);
/* tracestate value grammar: 1..256 chars, no trailing space, no ',' '='. */
bool trace_w3c__ts_value_ok(const char *v, size_t n);

#endif
