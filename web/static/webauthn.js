// WebAuthn ceremonies with the browser's JSON helpers (options in, credential JSON out).
"use strict";

const BastionWebAuthn = {
  async create(options) {
    const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey);
    const credential = await navigator.credentials.create({publicKey});
    return credential.toJSON();
  },
  async get(options) {
    const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(options.publicKey);
    const credential = await navigator.credentials.get({publicKey});
    return credential.toJSON();
  },
};
