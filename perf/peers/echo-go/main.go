// echo-go: the grpc-go peer of the gRPC benchmark (perf/bench-grpc.sh).
//
// It serves shop.test.v1.EchoService/Echo (proto/shop/test/v1/echo.proto)
// with the same semantics as our test server (tests/grpc/echo_server.c):
// the payload is echoed back, or response_size bytes are sent instead;
// status_code/status_message answer with that status; delay_ms waits first;
// echo_metadata copies the received custom metadata into the response.
//
//	var/tools/bin/echo-go -addr 127.0.0.1:0     # prints "listening on PORT"
//	GOMAXPROCS=1 taskset -c 0 var/tools/bin/echo-go -addr 127.0.0.1:50051
//
// SIGTERM or SIGINT: graceful stop (calls in flight finish), exit 0.
//
// No generated code: the service is registered with a hand-written
// grpc.ServiceDesc and a codec that hands the handler the raw message bytes,
// which it decodes and encodes with protowire (field numbers from
// echo.proto).  This needs no protoc at build time, and the peer does no
// more work per call than generated code would (reflection-free decode of
// two or three fields), so it is not handicapped against our server.
// GOMAXPROCS is the Go runtime's own: the environment variable, else the
// CPUs of the affinity mask (taskset).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// rawCodec passes message bytes through: the handler decodes them itself.
// Its name is "proto" so clients sending application/grpc+proto (or plain
// application/grpc) are served by it.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

// echoRequest holds the fields of shop.test.v1.EchoRequest.
type echoRequest struct {
	payload       []byte // 1
	statusCode    int32  // 2
	statusMessage string // 3
	delayMs       uint32 // 4
	responseSize  uint32 // 5
	echoMetadata  bool   // 6
}

func parseRequest(b []byte) (echoRequest, error) {
	var r echoRequest
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return r, protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return r, protowire.ParseError(m)
			}
			r.payload, b = v, b[m:]
		case num == 3 && typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return r, protowire.ParseError(m)
			}
			r.statusMessage, b = string(v), b[m:]
		case (num == 2 || num == 4 || num == 5 || num == 6) && typ == protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return r, protowire.ParseError(m)
			}
			b = b[m:]
			switch num {
			case 2:
				r.statusCode = int32(v)
			case 4:
				r.delayMs = uint32(v)
			case 5:
				r.responseSize = uint32(v)
			case 6:
				r.echoMetadata = v != 0
			}
		default: // unknown field: skip, as proto3 parsers do
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return r, protowire.ParseError(m)
			}
			b = b[m:]
		}
	}
	return r, nil
}

func echo(ctx context.Context, in []byte) ([]byte, error) {
	req, err := parseRequest(in)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "EchoRequest: %v", err)
	}
	if req.delayMs > 0 {
		t := time.NewTimer(time.Duration(req.delayMs) * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if req.statusCode != 0 {
		return nil, status.Error(codes.Code(req.statusCode), req.statusMessage)
	}
	payload := req.payload
	if req.responseSize > 0 {
		payload = make([]byte, req.responseSize)
		for i := range payload {
			payload[i] = 'x'
		}
	}
	out := make([]byte, 0, len(payload)+8)
	if len(payload) > 0 {
		out = protowire.AppendTag(out, 1, protowire.BytesType)
		out = protowire.AppendBytes(out, payload)
	}
	if req.echoMetadata {
		md, _ := metadata.FromIncomingContext(ctx)
		for k, vs := range md {
			if strings.HasPrefix(k, ":") || strings.HasPrefix(k, "grpc-") || k == "content-type" ||
				k == "te" || k == "user-agent" {
				continue
			}
			for _, v := range vs { // grpc-go already decoded "-bin" values
				var e []byte
				e = protowire.AppendTag(e, 1, protowire.BytesType)
				e = protowire.AppendString(e, k)
				e = protowire.AppendTag(e, 2, protowire.BytesType)
				e = protowire.AppendString(e, v)
				out = protowire.AppendTag(out, 2, protowire.BytesType)
				out = protowire.AppendBytes(out, e)
			}
		}
	}
	// trace_id and parent_span_id (3, 4) stay empty: this peer does not trace.
	return out, nil
}

type echoService interface{}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: "shop.test.v1.EchoService",
	HandlerType: (*echoService)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			var in []byte
			if err := dec(&in); err != nil {
				return nil, err
			}
			out, err := echo(ctx, in)
			if err != nil {
				return nil, err
			}
			return &out, nil
		},
	}},
	Streams:  []grpc.StreamDesc{},
	Metadata: "shop/test/v1/echo.proto",
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (port 0: ephemeral)")
	flag.Parse()
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "echo-go: listen %s: %v\n", *addr, err)
		os.Exit(1)
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}))
	srv.RegisterService(&serviceDesc, struct{}{})

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		srv.GracefulStop()
	}()
	fmt.Printf("listening on %d\n", lis.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintf(os.Stderr, "echo-go: serve: %v\n", err)
		os.Exit(1)
	}
}
