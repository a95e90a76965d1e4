"""An unmodified MCP client from the official Python SDK 2.x (`mcp.Client`, the 2026-07-28
transport): lists the tools page by page (printing each page's tools, `nextCursor`, `ttlMs` and
`cacheScope` as the client read them), then calls `transfer` (amount argv[2]): the server asks
for a confirmation (an `InputRequiredResult`), which the client's elicitation callback gives
and the SDK retries the call with. With argv[3], it then drives the round trip itself: it takes
the `InputRequiredResult` of a call for that amount and retries with amount argv[3] and the
same input. Prints what it saw as JSON."""
import asyncio
import json
import sys

from mcp import Client
from mcp_types import ElicitResult


async def confirm(context, params):
    return ElicitResult(action="accept", content={"ok": True})


def error(e):
    err = getattr(e, "error", None)
    return {"error": getattr(err, "message", str(e)), "code": getattr(err, "code", None)}


async def main(url, amount, retry_amount):
    out = {"pages": []}
    async with Client(url, raise_exceptions=True, elicitation_callback=confirm) as client:
        out["protocol"] = client.protocol_version
        cursor = None
        for _ in range(10):
            page = await client.list_tools(cursor=cursor, cache_mode="refresh")
            out["pages"].append(
                {
                    "tools": [t.name for t in page.tools],
                    "nextCursor": page.next_cursor,
                    "ttlMs": page.ttl_ms,
                    "cacheScope": page.cache_scope,
                }
            )
            cursor = page.next_cursor
            if cursor is None:
                break
        try:
            res = await client.call_tool("transfer", {"amount": amount})
            out["transfer"] = {"text": [c.text for c in res.content], "isError": res.is_error}
        except Exception as e:
            out["transfer"] = error(e)
        if retry_amount is not None:
            first = await client.session.call_tool(
                "transfer", {"amount": amount}, allow_input_required=True
            )
            out["input_required"] = first.result_type
            answers = {key: {"action": "accept", "content": {"ok": True}} for key in first.input_requests or {}}
            try:
                res = await client.call_tool(
                    "transfer",
                    {"amount": retry_amount},
                    input_responses=answers,
                    request_state=first.request_state,
                )
                out["retry"] = {"text": [c.text for c in res.content], "isError": res.is_error}
            except Exception as e:
                out["retry"] = error(e)
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if sys.argv[3:] else None))
