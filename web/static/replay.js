// Replay of a recorded session with asciinema-player (speed, seek, pause); ?t=SECONDS starts there.
"use strict";

(() => {
  const element = document.getElementById("player");
  const options = {controls: true, speed: 1, idleTimeLimit: 2, fit: "width"};
  // A search hit links here with the moment it was seen; show that frame and play on from it.
  const t = Number.parseFloat(new URLSearchParams(window.location.search).get("t") || "");
  if (Number.isFinite(t) && t > 0) {
    options.startAt = t;
    options.preload = true;
    options.poster = `npt:${t}`;
  }
  AsciinemaPlayer.create(element.dataset.cast, element, options);
})();
