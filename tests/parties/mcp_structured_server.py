"""An MCP server from the official Python SDK (FastMCP, streamable HTTP at /mcp) whose tool
returns structured output: the SDK sends it both as `structuredContent` and as JSON text in
`content[0].text`."""
import sys

from mcp.server.fastmcp import FastMCP
from pydantic import BaseModel

server = FastMCP("crm", host="127.0.0.1", port=int(sys.argv[1]))


class Customer(BaseModel):
    name: str
    email: str
    card: str
    ssn: str
    tier: str


@server.tool()
def customer(query: str) -> Customer:
    """Finds a customer."""
    return Customer(
        name="Jane Doe",
        email="jane.doe@example.com",
        card="4111 1111 1111 1111",
        ssn="078-05-1120",
        tier="gold",
    )


if __name__ == "__main__":
    server.run(transport="streamable-http")
