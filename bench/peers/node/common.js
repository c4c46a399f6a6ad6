"use strict";
// What both Node.js peers share: the command line, the health endpoints and Parley's
// message shape (the same fields as bench/peers/raw_aiohttp.py).

const http = require("node:http");

function parseArgs(defaultPort) {
  const args = { host: "127.0.0.1", port: defaultPort };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === "--host") args.host = value;
    else if (flag === "--port") args.port = Number(value);
    else {
      console.error(`unknown option ${flag}; usage: --host HOST --port PORT`);
      process.exit(2);
    }
  }
  return args;
}

// An HTTP server answering /healthz and /readyz; everything else is 404.
function healthServer() {
  return http.createServer((req, res) => {
    const path = req.url.split("?", 1)[0];
    if (path === "/healthz" || path === "/readyz") {
      res.writeHead(200, { "Content-Type": "text/plain" });
      res.end("ok");
    } else {
      res.writeHead(404);
      res.end();
    }
  });
}

let nextId = 1;
const seqs = new Map();

// A chat message in Parley's shape, with the room's next seq.
function chatMessage(room, sender, data) {
  const seq = (seqs.get(room) || 0) + 1;
  seqs.set(room, seq);
  return {
    id: String(nextId++),
    conversation_id: room,
    seq,
    sender_id: sender,
    content: data.content === undefined ? "" : data.content,
    sent_at: new Date().toISOString(),
    status: "sent",
    reply_to: null,
    attachments: [],
    local_id: data.local_id === undefined ? null : data.local_id,
  };
}

function listen(server, { host, port }, name) {
  server.listen({ host, port, backlog: 4096 }, () => {
    console.log(`${name} listening on http://${host}:${port}`);
  });
  process.on("SIGTERM", () => process.exit(0));
  process.on("SIGINT", () => process.exit(0));
}

module.exports = { parseArgs, healthServer, chatMessage, listen };
