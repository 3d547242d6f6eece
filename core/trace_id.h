/*
 * core/trace_id.h - internals of the id generator (core/trace_id.c).
 * The public id API is in core.h.
 */
#ifndef SHOP_CORE_TRACE_ID_H
#define SHOP_CORE_TRACE_ID_H

#include <stdint.h>

/* Next 64 random bits of the calling thread's generator (seeded lazily). */
uint64_t trace_id__next(void);

#endif
