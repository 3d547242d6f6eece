/*
 * tests/fuzz/fuzz_span_record.c - the span record and resource decoders, as
 * the exporter runs them on untrusted shared memory: decode, then walk every
 * item and every array element.  ASan catches any read out of bounds (the
 * input is copied into an exact-size heap buffer).
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink; /* keeps the reads from being optimised out */

static void walk(const uint8_t *items, uint32_t len)
{
    uint32_t off = 0;
    span_record_item_t it;
    while (span_record_next(items, len, &off, &it) == 1) {
        if (it.tag < SPAN_ITEM_ATTR || it.tag > SPAN_ITEM_LINK_ATTR)
            continue;
        switch (it.type) {
        case TRACE_ATTR_STRING_ARRAY: {
            uint32_t o = 0;
            trace_str_t s;
            while (span_record_array_str(&it, &o, &s) == 1)
                sink += s.len ? (uint8_t)s.p[s.len - 1] : 0;
            break;
        }
        case TRACE_ATTR_BOOL_ARRAY:
            for (uint32_t i = 0; i < it.count; i++)
                sink += span_record_array_bool(&it, i);
            break;
        case TRACE_ATTR_INT_ARRAY:
        case TRACE_ATTR_DOUBLE_ARRAY:
            for (uint32_t i = 0; i < it.count; i++)
                sink += (uint64_t)span_record_array_int(&it, i);
            break;
        default:
            break;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    memcpy(copy, data, size);
    span_record_t r;
    if (span_record_decode(copy, size, &r) == 0)
        walk(r.items, r.items_len);
    span_resource_t res;
    if (span_resource_decode(copy, size, &res) == 0)
        walk(res.items, res.items_len);
    free(copy);
    return 0;
}
