// An MCP client from the official TypeScript SDK's 2.x packages (`@modelcontextprotocol/client`,
// version negotiation `auto`: it discovers the server with `server/discover` and speaks the
// 2026-07-28 revision, routing headers included): lists the tools, then calls each tool named
// after the URL. Prints what it saw as JSON: the negotiated revision, the listing, and each
// call's text or JSON-RPC error (as the SDK reports it to its user).
//
// node mcp_ts2_client.mjs URL [TOOL...]
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

const [url, ...calls] = process.argv.slice(2);
const out = { lists: [], calls: [] };
const transport = new StreamableHTTPClientTransport(new URL(url));
const client = new Client(
  { name: 'callgate-e2e', version: '1.0.0' },
  { versionNegotiation: { mode: 'auto' } },
);
await client.connect(transport);
out.protocol = client.getNegotiatedProtocolVersion();
const { tools } = await client.listTools();
out.lists.push(Object.fromEntries(tools.map((t) => [t.name, t.description])));
for (const name of calls) {
  const args = name === 'delete_table' ? { name: 'users' } : { query: 'refund of 4111111111111111' };
  try {
    const res = await client.callTool({ name, arguments: args });
    out.calls.push({
      tool: name,
      text: (res.content ?? []).map((c) => c.text),
      isError: res.isError ?? false,
    });
  } catch (e) {
    out.calls.push({ tool: name, error: e.message, code: e.code ?? null });
  }
}
await client.close();
console.log(JSON.stringify(out));
process.exit(0);
