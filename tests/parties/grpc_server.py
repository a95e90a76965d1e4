"""A gRPC server (grpcio) with two unary methods on demo.Greeter, raw bytes in and out."""
import sys
from concurrent import futures

import grpc


def say_hello(request, context):
    return b"hello " + request


def delete(request, context):
    return b"deleted " + request


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Greeter", {
    "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
    "Delete": grpc.unary_unary_rpc_method_handler(delete),
}),))
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
server.wait_for_termination()
