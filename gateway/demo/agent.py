"""The demo's agent: an ordinary program that knows nothing of callgate. It calls a payments
API with plain HTTP (urllib) and an MCP tool server with the MCP SDK's client, five calls in a
fixed order, and prints what it got. Where the services are: $DEMO_PAYMENTS_URL and
$DEMO_TOOLS_URL."""
import asyncio
import json
import os
import urllib.error
import urllib.request

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError

PAYMENTS = os.environ["DEMO_PAYMENTS_URL"]
TOOLS = os.environ["DEMO_TOOLS_URL"]


def http(method, path, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(PAYMENTS + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def tool(name, args):
    async with streamablehttp_client(TOOLS) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            try:
                res = await session.call_tool(name, args)
                return " ".join(c.text for c in res.content)
            except McpError as e:
                return f"error {e.error.code}: {e.error.message}"


def say(step, what):
    print(f"agent: {step}: {what}", flush=True)


def main():
    say("1 list payments", "%s %s" % http("GET", "/v1/payments"))
    say("2 refund 5000 EUR of p_1001",
        "%s %s" % http("POST", "/v1/payments/p_1001/refund", {"amount": 5000, "currency": "EUR"}))
    say("3 search the docs", asyncio.run(tool("search_docs", {"query": "jane doe"})))
    # Held by the gateway until someone approves it: wait as long as the rule's timeout.
    say("4 refund 250 EUR of p_1002",
        "%s %s" % http("POST", "/v1/payments/p_1002/refund", {"amount": 250, "currency": "EUR"},
                       timeout=900))
    say("5 search the docs again", asyncio.run(tool("search_docs", {"query": "refunds"})))
    say("done", "5 calls")


if __name__ == "__main__":
    main()
