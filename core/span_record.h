/*
 * core/span_record.h - internals of the span record format
 * (core/span_record.c): attribute item writers shared by the span builder
 * and the resource encoder.  Layout: docs/SPAN_RECORD.md.
 */
#ifndef SHOP_CORE_SPAN_RECORD_H
#define SHOP_CORE_SPAN_RECORD_H

#include "core.h"

/* Bytes an attribute item takes with the value length limit applied
 * (vlimit chars per string); 0 when the key or a value cannot be encoded
 * (key > 65535 bytes, value > 4 GiB, unknown type). */
size_t span_record__attr_size(const trace_attr_t *a, uint32_t vlimit);
/* Writes the item (tag SPAN_ITEM_*ATTR) at p; room was checked with
 * span_record__attr_size.  Returns the bytes written. */
size_t span_record__put_attr(uint8_t *p, uint8_t tag, const trace_attr_t *a, uint32_t vlimit);
/* Bytes of s[0..n) that hold at most `limit` UTF-8 characters. */
size_t span_record__utf8_cut(const char *s, size_t n, uint32_t limit);

#endif
