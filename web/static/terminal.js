// The web terminal: xterm.js on a websocket; binary frames carry keys and output.
"use strict";

(() => {
  const element = document.getElementById("terminal");
  const status = document.getElementById("terminal-status");
  const term = new Terminal({cursorBlink: true, convertEol: false});
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(element);
  fit.fit();
  const url = "wss://" + window.location.host + "/api/v1/terminal/" +
    encodeURIComponent(element.dataset.target) + "/" + encodeURIComponent(element.dataset.account);
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  socket.addEventListener("open", () => {
    socket.send(JSON.stringify({type: "resize", cols: term.cols, rows: term.rows}));
    status.textContent = "connected";
    term.focus();
  });
  socket.addEventListener("message", (event) => {
    if (typeof event.data === "string") {
      const message = JSON.parse(event.data);
      if (message.type === "exit") status.textContent = "session ended";
      if (message.type === "error") {
        status.textContent = message.message;
        const stepUp = /step-up to level (\d)/.exec(message.message);
        if (stepUp) window.location.assign("/login?level=" + stepUp[1] + "&next=" + encodeURIComponent(window.location.pathname));
      }
      return;
    }
    term.write(new Uint8Array(event.data));
  });
  socket.addEventListener("close", () => { if (status.textContent === "connected") status.textContent = "disconnected"; });
  term.onData((data) => { if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data)); });
  term.onResize(({cols, rows}) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({type: "resize", cols, rows}));
  });
  window.addEventListener("resize", () => fit.fit());
})();
