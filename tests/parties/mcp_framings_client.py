"""The client side of tests/mcp_framings.rs, run inside an enabled cgroup; prints one JSON object.
`mcp_framings_client.py sdk URL [TOOL...]`: the official SDK client lists the tools and calls each TOOL.
`mcp_framings_client.py dupid URL SLOW FAST [GAP]`: raw HTTP; calls SLOW (id 1), then after GAP seconds
FAST with the same JSON-RPC id, concurrently; keeps both answers."""
import asyncio
import json
import sys

import httpx

MODE, URL = sys.argv[1], sys.argv[2]
PV = "2025-06-18"


async def sdk(tools):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    out = {"calls": []}
    try:
        async with streamablehttp_client(URL, timeout=10, sse_read_timeout=10) as (r, w, _):
            async with ClientSession(r, w) as s:
                await asyncio.wait_for(s.initialize(), 10)
                listed = await asyncio.wait_for(s.list_tools(), 10)
                out["tools"] = [t.name for t in listed.tools]
                out["descriptions"] = [t.description for t in listed.tools]
                for t in tools:
                    try:
                        res = await asyncio.wait_for(s.call_tool(t, {"query": "x", "id": "1"}), 10)
                        out["calls"].append({"tool": t, "result": res.model_dump(mode="json")})
                    except Exception as e:  # noqa: BLE001
                        out["calls"].append({"tool": t, "error": repr(e)})
    except BaseException as e:  # noqa: BLE001
        out["error"] = repr(e)
    print(json.dumps(out))


async def dupid(slow, fast, gap, slow_id, fast_id):
    out = {}
    h = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    async with httpx.AsyncClient(timeout=15) as c:
        r = await c.post(URL, headers=h, json={
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": PV, "capabilities": {},
                       "clientInfo": {"name": "framings", "version": "1"}}})
        sid = r.headers.get("mcp-session-id")
        h2 = dict(h, **{"mcp-session-id": sid, "mcp-protocol-version": PV})
        await c.post(URL, headers=h2, json={"jsonrpc": "2.0", "method": "notifications/initialized"})

        async def call(tool, rid, delay):
            await asyncio.sleep(delay)
            body = ""
            try:
                async with c.stream("POST", URL, headers=h2, json={
                        "jsonrpc": "2.0", "id": rid, "method": "tools/call",
                        "params": {"name": tool, "arguments": {"id": "42", "query": "q"}}}) as s:
                    async for chunk in s.aiter_text():
                        body += chunk
                        if '"result"' in body or '"error"' in body:
                            if body.replace("\r\n", "\n").endswith("\n\n") or not s.headers.get("content-type", "").startswith("text/event-stream"):
                                break
            except Exception as e:  # noqa: BLE001
                body += f"<exception {e!r}>"
            return body

        a = asyncio.create_task(call(slow, slow_id, 0))
        b = asyncio.create_task(call(fast, fast_id, gap))
        done, pending = await asyncio.wait({a, b}, timeout=6)
        out["slow_body"] = a.result() if a in done else "<pending>"
        out["fast_body"] = b.result() if b in done else "<pending>"
        for t in pending:
            t.cancel()
    print(json.dumps(out))


if MODE == "sdk":
    asyncio.run(sdk(sys.argv[3:]))
elif MODE == "dupid":
    gap = float(sys.argv[5]) if len(sys.argv) > 5 else 0.2
    slow_id = json.loads(sys.argv[6]) if len(sys.argv) > 6 else 1
    fast_id = json.loads(sys.argv[7]) if len(sys.argv) > 7 else 1
    asyncio.run(dupid(sys.argv[3], sys.argv[4], gap, slow_id, fast_id))
