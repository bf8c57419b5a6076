// A scripted MCP client on the official TypeScript SDK, standing in for a
// model: it runs the command line it is given as an MCP server over
// stdio, calls latch mcp's tools, and prints what it got as one JSON
// object. The calls' arguments come from $MCP_CALLS (a JSON object of
// name → tool call).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [command, ...args] = process.argv.slice(2);
const transport = new StdioClientTransport({ command, args, env: process.env, stderr: "inherit" });
const client = new Client({ name: "ts-sdk-test-client", version: "1.0.0" });
await client.connect(transport);

const out = { tools: (await client.listTools()).tools.map((t) => t.name).sort() };
for (const [name, call] of Object.entries(JSON.parse(process.env.MCP_CALLS))) {
  out[name] = await client.callTool(call);
}
console.log(JSON.stringify(out));
await client.close();
