/*
 * proto/shop_proto.h - one include for the protobuf-c code generated from
 * the shop's own contracts: shop.v1 (OrderService, UserService,
 * InventoryService, PaymentService) and grpc.health.v1 (health checks).
 *
 * Link with shop_proto_dep (meson). Names follow protobuf-c, e.g.
 * Shop__V1__CreateOrderRequest, shop__v1__create_order_request__init(),
 * shop__v1__order_service__descriptor. Unpacked messages are freed with the
 * matching __free_unpacked(); packing never allocates (the caller passes
 * the buffer, see __get_packed_size()).
 */
#ifndef SHOP_SHOP_PROTO_H
#define SHOP_SHOP_PROTO_H

#include "grpc/health/v1/health.pb-c.h"
#include "shop/v1/inventory.pb-c.h"
#include "shop/v1/order.pb-c.h"
#include "shop/v1/payment.pb-c.h"
#include "shop/v1/user.pb-c.h"

#endif
