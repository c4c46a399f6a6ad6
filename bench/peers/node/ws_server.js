"use strict";
// The fan-out job on the `ws` library (Node.js): the same frames and rooms as
// bench/peers/raw_aiohttp.py, no persistence, no auth.
//
// A socket joins a room with {"action": "join", "room": "r1"} (answered
// {"type": "joined", "room": "r1"}) or with ?room=r1 on the URL. Each message is encoded
// once and written to every member socket.
//
//     node bench/peers/node/ws_server.js --port 8005

const { WebSocketServer } = require("ws");
const { parseArgs, healthServer, chatMessage, listen } = require("./common");

const args = parseArgs(8005);
const server = healthServer();
const wss = new WebSocketServer({ server, path: "/ws", maxPayload: 1 << 20 });
const rooms = new Map(); // room → Set of sockets

function enter(ws, joined, room) {
  joined.add(room);
  let members = rooms.get(room);
  if (members === undefined) rooms.set(room, (members = new Set()));
  members.add(ws);
}

function error(code, localId) {
  const err = { code, message: code.toLowerCase() };
  if (localId !== undefined && localId !== null) err.local_id = localId;
  return JSON.stringify({ type: "error", error: err });
}

let anon = 0;

wss.on("connection", (ws, req) => {
  const query = new URL(req.url, "http://peer").searchParams;
  const joined = new Set();
  if (query.has("room")) enter(ws, joined, query.get("room"));
  const user = query.get("user") || `anon${++anon}`;

  ws.on("message", (data, isBinary) => {
    if (isBinary) {
      ws.close(1003);
      return;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      frame = null;
    }
    if (frame === null || typeof frame !== "object" || typeof frame.action !== "string") {
      ws.send(error("INVALID_MESSAGE", null));
      return;
    }
    if (frame.action === "send_message") {
      const room = String(frame.conversation_id);
      if (!joined.has(room)) {
        ws.send(error("FORBIDDEN", frame.local_id));
        return;
      }
      const message = chatMessage(room, user, frame);
      const out = Buffer.from(JSON.stringify({ type: "chat_message", message }));
      for (const member of rooms.get(room)) {
        if (member.readyState === member.OPEN) member.send(out, { binary: false });
      }
    } else if (frame.action === "join") {
      const room = String(frame.room);
      enter(ws, joined, room);
      ws.send(JSON.stringify({ type: "joined", room }));
    } else if (frame.action === "heartbeat") {
      ws.send(JSON.stringify({ type: "heartbeat_ack", data: { timestamp: new Date().toISOString() } }));
    }
  });

  ws.on("close", () => {
    for (const room of joined) {
      const members = rooms.get(room);
      members.delete(ws);
      if (members.size === 0) rooms.delete(room);
    }
  });
  ws.on("error", () => {});
});

listen(server, args, "ws peer");
