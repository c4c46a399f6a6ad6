"use strict";
// The fan-out job on Socket.IO 4 (Node.js): rooms, emit to room, no persistence, no auth.
//
// Used the way its documentation shows, and the same events as
// bench/peers/socketio_server.py: a `join` event whose acknowledgement says the socket is
// in the room, and a `send_message` event that emits `chat_message` to the room, the
// sender included. Payloads are Parley's shapes.
//
//     node bench/peers/node/socketio_server.js --port 8004

const { Server } = require("socket.io");
const { parseArgs, healthServer, chatMessage, listen } = require("./common");

const args = parseArgs(8004);
const httpServer = healthServer(); // Socket.IO takes /socket.io/, the rest stays ours
const io = new Server(httpServer, { cors: { origin: "*" } });

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack(true);
  });
  socket.on("send_message", (data) => {
    if (data === null || typeof data !== "object") return;
    const room = String(data.conversation_id);
    if (!socket.rooms.has(room)) {
      socket.emit("error", { error: { code: "FORBIDDEN", local_id: data.local_id } });
      return;
    }
    io.to(room).emit("chat_message", { message: chatMessage(room, socket.id, data) });
  });
});

listen(httpServer, args, "socket.io peer");
