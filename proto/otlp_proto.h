/*
 * proto/otlp_proto.h - one include for the protobuf-c code generated from
 * proto/: the OTLP trace export messages and the google.rpc types used to
 * read grpc-status-details-bin (Status, RetryInfo).
 *
 * Link with otlp_proto_dep (meson). Names follow protobuf-c, e.g.
 * Opentelemetry__Proto__Trace__V1__Span, opentelemetry__proto__trace__v1__span__init().
 * Unpacked messages are freed with the matching __free_unpacked(); packing
 * never allocates (the caller passes the buffer, see __get_packed_size()).
 */
#ifndef SHOP_OTLP_PROTO_H
#define SHOP_OTLP_PROTO_H

#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"
#include "opentelemetry/proto/common/v1/common.pb-c.h"
#include "opentelemetry/proto/resource/v1/resource.pb-c.h"
#include "opentelemetry/proto/trace/v1/trace.pb-c.h"
#include "google/rpc/error_details.pb-c.h"
#include "google/rpc/status.pb-c.h"

#endif
