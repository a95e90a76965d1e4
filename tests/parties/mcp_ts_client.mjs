// An unmodified MCP client from the official TypeScript SDK (`@modelcontextprotocol/sdk`,
// Streamable HTTP), in one session: lists the tools, then calls each tool named after the URL
// in turn, listing again after every call. Prints what it saw as JSON: the protocol version
// the session speaks, each listing (name → description) and each call's text, structured
// content or JSON-RPC error (as the SDK reports it to its user).
//
// node mcp_ts_client.mjs URL [TOOL...]
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [url, ...calls] = process.argv.slice(2);
const out = { lists: [], calls: [] };
const transport = new StreamableHTTPClientTransport(new URL(url));
const client = new Client({ name: 'callgate-e2e', version: '1.0.0' });
await client.connect(transport);
out.protocol = transport.protocolVersion;

async function listing() {
  const { tools } = await client.listTools();
  out.lists.push(Object.fromEntries(tools.map((t) => [t.name, t.description])));
}

await listing();
for (const name of calls) {
  const args = name === 'delete_table' ? { name: 'users' } : { query: 'refund of 4111111111111111' };
  try {
    const res = await client.callTool({ name, arguments: args });
    out.calls.push({
      tool: name,
      text: (res.content ?? []).map((c) => c.text),
      structured: res.structuredContent ?? null,
      isError: res.isError ?? false,
    });
  } catch (e) {
    out.calls.push({ tool: name, error: e.message, code: e.code ?? null });
  }
  await listing();
}
await client.close();
console.log(JSON.stringify(out));
process.exit(0);
