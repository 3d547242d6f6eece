/*
 * core/trace.h - internals of the span builder and the per-process tracing
 * state (core/trace.c).  The public API is in core.h.
 */
#ifndef SHOP_CORE_TRACE_H
#define SHOP_CORE_TRACE_H

#include "core.h"

/* Completes the record header of an ended span in s->_buf, cutting items
 * from the end until it fits `limit` bytes (dropped counts updated).
 * Returns the record length, or 0 when even the header, name and scope do
 * not fit.  *truncated says whether anything was dropped for room. */
uint32_t trace__finish(trace_span_t *s, uint64_t end_ns, uint32_t limit, bool *truncated);

#endif
