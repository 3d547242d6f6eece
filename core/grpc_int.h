/*
 * core/grpc_int.h - internal: helpers core/grpc.c shares with
 * core/grpc_server.c.  Not part of the public API (grpc.h is).
 */
#ifndef SHOP_CORE_GRPC_INT_H
#define SHOP_CORE_GRPC_INT_H

#include <stddef.h>
#include <stdint.h>

/* gunzip in[0..len) into a new malloc'd buffer (*out, caller frees) of at
 * most max bytes.  Returns 0, -EMSGSIZE (over max), -EBADMSG (corrupt),
 * -ENOMEM. */
int grpc__gunzip(const uint8_t *in, size_t len, uint32_t max, uint8_t **out, size_t *outlen);

#endif
