/*
 * core/trace_sampler.h - internals of samplers and span limits
 * (core/trace_sampler.c).  The public API is in core.h.
 */
#ifndef SHOP_CORE_TRACE_SAMPLER_H
#define SHOP_CORE_TRACE_SAMPLER_H

#include <stdint.h>

/* The 56 random bits TraceIdRatioBased compares: bytes 9..15, big-endian. */
uint64_t trace_sampler__randomness(const uint8_t *trace_id);

#endif
