// Registering a security key for the console.
"use strict";

document.getElementById("register-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const options = await Bastion.api("/api/v1/me/webauthn/register/begin", {});
    const credential = await BastionWebAuthn.create(options);
    await Bastion.api("/api/v1/me/webauthn/register/complete", {credential, label: event.target.elements.label.value});
    window.location.reload();
  } catch (error) {
    Bastion.showError("register-error", error.message || String(error));
  }
});
