"use strict";
// Drives the vendored bundles under the page's CSP; outcomes land in window.infra for the test.
(function () {
  const infra = (window.infra = {});

  function record(name, promise) {
    return promise.then(
      (value) => { infra[name] = { ok: true, value }; },
      (err) => { infra[name] = { ok: false, error: `${err.name}: ${err.message}` }; });
  }

  function b64url(buffer) {
    return btoa(String.fromCharCode(...new Uint8Array(buffer)))
      .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function unb64url(text) {
    const bin = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  }

  // authenticatorData: rpIdHash (32 bytes), flags (1 byte: UP=0x01, UV=0x04), signCount (4 bytes).
  function authFlags(authData) {
    const bytes = new Uint8Array(authData);
    const count = new DataView(bytes.buffer, bytes.byteOffset + 33, 4).getUint32(0);
    return { up: Boolean(bytes[32] & 0x01), uv: Boolean(bytes[32] & 0x04), signCount: count };
  }

  function xterm() {
    const term = new Terminal({ cols: 60, rows: 6 });
    const fit = new FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(document.getElementById("term"));
    return new Promise((resolve) => {
      // Rendering is a frame after parsing: read the DOM once a render covered the first row.
      const done = term.onRender(() => {
        const rendered = document.querySelector("#term .xterm-rows").textContent;
        if (!rendered.includes("hello")) return;
        done.dispose();
        resolve({
          buffer: term.buffer.active.getLine(0).translateToString(true),
          rendered,
          proposed: fit.proposeDimensions() !== undefined,
        });
      });
      // Palette and 24-bit colours: the DOM renderer styles them differently.
      term.write("hello from \x1b[1;32mxterm\x1b[0m \x1b[38;2;255;128;0mtruecolor\x1b[0m\r\n");
    });
  }

  function player() {
    const el = document.getElementById("player");
    const p = AsciinemaPlayer.create("/static/demo.cast", el, { autoPlay: true, speed: 5, cols: 60, rows: 6 });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("player never ended")), 8000);
      p.addEventListener("ended", () => {
        clearTimeout(timer);
        resolve({ duration: p.getDuration() });
      });
    });
  }

  async function register() {
    const cred = await navigator.credentials.create({ publicKey: {
      rp: { name: "Bastion test" },
      user: { id: crypto.getRandomValues(new Uint8Array(16)), name: "alice", displayName: "Alice" },
      challenge: crypto.getRandomValues(new Uint8Array(32)),
      pubKeyCredParams: [{ type: "public-key", alg: -7 }, { type: "public-key", alg: -257 }],
      authenticatorSelection: { residentKey: "required", userVerification: "required" },
      attestation: "none",
      timeout: 5000,
    } });
    return { id: cred.id, type: cred.type, flags: authFlags(cred.response.getAuthenticatorData()) };
  }

  async function authenticate(credentialId, userVerification) {
    const assertion = await navigator.credentials.get({ publicKey: {
      challenge: crypto.getRandomValues(new Uint8Array(32)),
      allowCredentials: [{ type: "public-key", id: unb64url(credentialId) }],
      userVerification,
      timeout: 3000,
    } });
    return { id: assertion.id, matches: b64url(assertion.rawId) === credentialId,
             flags: authFlags(assertion.response.authenticatorData) };
  }

  // The test calls this again after changing the virtual key (e.g. user verification off).
  window.infraAuthenticate = (credentialId, userVerification) =>
    record("authenticate", authenticate(credentialId, userVerification)).then(() => infra.authenticate);

  record("xterm", Promise.resolve().then(xterm));
  record("player", player());
  if (location.hash === "#webauthn") {
    record("webauthn", register().then(async (created) =>
      ({ created, asserted: await authenticate(created.id, "required") })));
  }
})();
