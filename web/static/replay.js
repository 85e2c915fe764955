// Replay of a recorded session with asciinema-player (speed, seek, pause).
"use strict";

(() => {
  const element = document.getElementById("player");
  AsciinemaPlayer.create(element.dataset.cast, element, {controls: true, speed: 1, idleTimeLimit: 2, fit: "width"});
})();
