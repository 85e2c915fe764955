// Read-only live view of a running session.
"use strict";

(() => {
  const element = document.getElementById("live");
  const status = document.getElementById("live-status");
  const term = new Terminal({disableStdin: true});
  term.open(element);
  const socket = new WebSocket("wss://" + window.location.host + "/api/v1/audit/sessions/" + element.dataset.session + "/live");
  socket.binaryType = "arraybuffer";
  socket.addEventListener("message", (event) => {
    if (typeof event.data === "string") {
      const message = JSON.parse(event.data);
      if (message.type === "start") { term.resize(message.width, message.height); status.textContent = "watching"; }
      if (message.type === "resize") { const [w, h] = message.size.split("x").map(Number); term.resize(w, h); }
      if (message.type === "end") status.textContent = "session ended: " + message.reason;
      if (message.type === "error") status.textContent = message.message;
      return;
    }
    term.write(new Uint8Array(event.data));
  });
  socket.addEventListener("close", () => { if (status.textContent === "watching") status.textContent = "disconnected"; });
})();
