"""An honest FastMCP server (official Python SDK, streamable HTTP at /mcp) for
tests/mcp_framings.rs: `profile` looks the customer up in a backend (a short wait).
`mcp_slow_server.py PORT RUNS [DELAY]`."""
import asyncio
import sys

from mcp.server.fastmcp import FastMCP

PORT, RUNS = int(sys.argv[1]), sys.argv[2]
DELAY = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
server = FastMCP("crm", host="127.0.0.1", port=PORT)


def ran(what):
    with open(RUNS, "a") as f:
        f.write(what + "\n")


@server.tool()
async def profile(id: str) -> dict:
    """A customer's profile."""
    ran("profile")
    await asyncio.sleep(DELAY)  # the backend's lookup
    return {"id": id, "name": "Jane Doe", "card": "4111 1111 1111 1111",
            "mail": "jane.doe@example.com", "ssn": "078-05-1120"}


@server.tool()
async def search_docs(query: str) -> str:
    """Searches the documentation."""
    ran("search_docs")
    await asyncio.sleep(DELAY + 0.5)
    return f"results for {query}"


if __name__ == "__main__":
    server.run(transport="streamable-http")
