"""The client side of tests/mcp_streams.rs, run inside an enabled cgroup.
`mcp_streams_client.py MODE URL [TOOL...]`; prints one JSON object.
  resume  raw HTTP: initialize, call TOOL (or list the tools: `tools/list`) over streamable
          HTTP (an SSE answer, masked by the gateway), then GET the session's stream with
          `Last-Event-ID` set to the answer's first event (the SDK server's priming event):
          the server replays the answer.
  sse     the official SDK client over the HTTP+SSE transport: list, call each TOOL, list.
  sdk     the official SDK client over streamable HTTP: call each TOOL, keep what came back."""
import asyncio
import json
import sys

import httpx

MODE, URL, TOOLS = sys.argv[1], sys.argv[2], sys.argv[3:]
PV = "2025-11-25"


def events(text):
    """(id, data) of each SSE event."""
    out, eid, data = [], None, []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line == "":
            if eid is not None or data:
                out.append((eid, "\n".join(data)))
            eid, data = None, []
        elif line.startswith("id:"):
            eid = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if eid is not None or data:
        out.append((eid, "\n".join(data)))
    return out


def resume():
    out = {}
    h = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    with httpx.Client(timeout=10) as c:
        r = c.post(URL, headers=h, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": PV, "capabilities": {},
                       "clientInfo": {"name": "atk", "version": "1"}}})
        sid = r.headers.get("mcp-session-id")
        out["initialize"] = r.status_code
        h2 = dict(h, **{"mcp-session-id": sid, "mcp-protocol-version": PV})
        c.post(URL, headers=h2, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        if TOOLS[0] == "tools/list":
            request = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
        else:
            request = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                       "params": {"name": TOOLS[0], "arguments": {"id": "42"}}}
        r = c.post(URL, headers=h2, json=request)
        out["call_status"] = r.status_code
        out["call_body"] = r.text
        evs = events(r.text)
        out["call_events"] = evs
        first = next((e for e, _ in evs if e), None)
        out["last_event_id"] = first
        if not first:
            print(json.dumps(out))
            return
        g = {"accept": "text/event-stream", "mcp-session-id": sid,
             "mcp-protocol-version": PV, "last-event-id": first}
        got = ""
        try:
            with c.stream("GET", URL, headers=g, timeout=httpx.Timeout(5.0)) as s:
                out["replay_status"] = s.status_code
                for chunk in s.iter_text():
                    got += chunk
                    if '"result"' in got and got.replace("\r\n", "\n").count("\n\n") >= 2:
                        break
                    if len(got) > 1 << 20:
                        break
        except httpx.ReadTimeout:
            out["replay_timeout"] = True
        out["replay_body"] = got
    print(json.dumps(out))


async def sse():
    from mcp import ClientSession
    from mcp.client.sse import sse_client
    from mcp.shared.exceptions import McpError

    out = {"lists": [], "calls": []}

    async def tools(session):
        res = await asyncio.wait_for(session.list_tools(), 8)
        return {t.name: t.description for t in res.tools}

    async with sse_client(URL, timeout=5, sse_read_timeout=15) as (read, write):
        async with ClientSession(read, write) as session:
            await asyncio.wait_for(session.initialize(), 8)
            out["lists"].append(await tools(session))
            for tool in TOOLS:
                try:
                    res = await asyncio.wait_for(
                        session.call_tool(tool, {"id": "42", "query": "q", "name": "users"}), 4)
                    out["calls"].append({"tool": tool, "isError": res.isError,
                                         "text": [getattr(c, "text", None) for c in res.content],
                                         "structured": res.structuredContent})
                except McpError as e:
                    out["calls"].append({"tool": tool, "error": e.error.message})
                except asyncio.TimeoutError:
                    out["calls"].append({"tool": tool, "error": "timeout"})
            try:
                out["lists"].append(await tools(session))
            except (McpError, asyncio.TimeoutError) as e:
                out["lists"].append({"error": str(e)})
    print(json.dumps(out))


async def sdk():
    from datetime import timedelta

    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client
    from mcp.shared.exceptions import McpError

    out = {"calls": []}
    async with streamablehttp_client(URL, timeout=5, sse_read_timeout=15) as (read, write, _):
        async with ClientSession(read, write, read_timeout_seconds=timedelta(seconds=8)) as session:
            await session.initialize()
            for tool in TOOLS:
                try:
                    name, _, rows = tool.partition(":")
                    args = {"rows": int(rows)} if rows else {"id": "42", "query": "q"}
                    res = await session.call_tool(name, args)
                    text = [getattr(c, "text", None) for c in res.content]
                    st = res.structuredContent
                    if rows:  # big: keep the head only
                        text = [t[t.find('"ssn"'):t.find('"ssn"') + 40] for t in text if t]
                        out.setdefault("sizes", []).append(sum(len(t) for t in text))
                        st = {k: v for k, v in (st or {}).items() if k != "history"}
                    out["calls"].append({"tool": tool, "isError": res.isError,
                                         "text": text, "structured": st})
                except McpError as e:
                    out["calls"].append({"tool": tool, "error": e.error.message})
    print(json.dumps(out))


def raw():
    """Each of the bodies in TOOLS (raw bytes as text) sent after initializing a session."""
    out = []
    h = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    with httpx.Client(timeout=8) as c:
        r = c.post(URL, headers=h, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": PV, "capabilities": {},
                       "clientInfo": {"name": "atk", "version": "1"}}})
        sid = r.headers.get("mcp-session-id")
        h2 = dict(h, **{"mcp-session-id": sid or "", "mcp-protocol-version": PV})
        c.post(URL, headers=h2, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        for body in TOOLS:
            extra = {}
            if body.startswith("CT="):
                ct, _, body = body[3:].partition(" ")
                extra["content-type"] = ct
            try:
                r = c.post(URL, headers=dict(h2, **extra), content=body.encode("utf-8", "surrogatepass"))
                out.append({"body": body[:120], "status": r.status_code, "answer": r.text[:300]})
            except Exception as e:
                out.append({"body": body[:120], "error": repr(e)})
    print(json.dumps(out))


if MODE == "raw":
    raw()
elif MODE == "resume":
    resume()
elif MODE == "sse":
    asyncio.run(sse())
else:
    asyncio.run(sdk())
