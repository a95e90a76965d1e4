"""An upstream for no_bypass_fields.rs: a grpcio server whose Admin/Delete acts on the tenant its
caller names in metadata, reading the first `x-team` value (as grpc-go's md.Get(k)[0] and
most interceptors do). Logs every call it runs to argv[2]."""
import json, sys
from concurrent import futures

import grpc


def delete(request, context):
    md = list(context.invocation_metadata())
    teams = [v for k, v in md if k == "x-team"]
    with open(sys.argv[2], "a") as f:
        f.write(json.dumps({"ran": "delete", "team": teams[0] if teams else None, "all": teams}) + "\n")
    return b"deleted " + request


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Admin", {
    "Delete": grpc.unary_unary_rpc_method_handler(delete),
}),))
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
server.wait_for_termination()
