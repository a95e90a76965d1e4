"""A gRPC client (grpcio): calls an allowed and a denied method and prints the outcomes."""
import json
import sys

import grpc

out = {}
with grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") as channel:
    for method in ("SayHello", "Delete"):
        call = channel.unary_unary(f"/demo.Greeter/{method}")
        try:
            out[method] = {"ok": call(b"world", timeout=10,
                                     metadata=(("x-team", "support"),)).decode()}
        except grpc.RpcError as e:
            out[method] = {"code": e.code().name, "details": e.details()}
print(json.dumps(out))
