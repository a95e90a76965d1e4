"""A gRPC server (grpcio) with two unary methods on demo.Greeter, raw bytes in and out."""
import sys
from concurrent import futures

import grpc


def say_hello(request, context):
    return b"hello " + request


def delete(request, context):
    return b"deleted " + request


def leak(request, context):
    """Answers with values in its trailing metadata: a card, an e-mail address."""
    context.set_trailing_metadata((("x-card", "4111 1111 1111 1111"),
                                   ("x-contact", "alice@example.com")))
    return b"ok"


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Greeter", {
    "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
    "Delete": grpc.unary_unary_rpc_method_handler(delete),
    "Leak": grpc.unary_unary_rpc_method_handler(leak),
}),))
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
server.wait_for_termination()
