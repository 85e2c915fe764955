// Login and step-up: password, then a TOTP code or a security key until the level is reached.
"use strict";

(() => {
  const section = document.getElementById("login");
  const next = section.dataset.next || "/";
  const level = Number(section.dataset.level || "1");

  function done(data) {
    window.location.assign(data.redirect || next);
  }

  function offer(data) {
    if (data.next === "done") return done(data);
    const second = document.getElementById("second-factor");
    second.hidden = false;
    if (data.next === "impossible") {
      Bastion.showError("login-error", "Level " + data.level + " needs " + data.needed + ", and you have none enrolled.");
      return;
    }
    document.getElementById("needed").textContent = "Level " + data.level + " needs " + data.needed + ".";
    document.getElementById("totp-form").hidden = !data.choices.includes("totp");
    document.getElementById("webauthn-button").hidden = !data.choices.includes("webauthn");
  }

  const passwordForm = document.getElementById("password-form");
  if (passwordForm) {
    passwordForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      Bastion.showError("login-error", "");
      try {
        offer(await Bastion.api("/api/v1/login/password", {...Bastion.formData(passwordForm), level, next}));
      } catch (error) {
        Bastion.showError("login-error", error.message);
      }
    });
  } else {
    Bastion.api("/api/v1/login/stepup", {level}).then(offer, (error) => Bastion.showError("login-error", error.message));
  }

  document.getElementById("totp-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    try {
      offer(await Bastion.api("/api/v1/login/totp", {code: form.elements.code.value, next}));
    } catch (error) {
      Bastion.showError("login-error", error.message);
    }
  });

  document.getElementById("webauthn-button").addEventListener("click", async () => {
    try {
      const options = await Bastion.api("/api/v1/login/webauthn/begin", {});
      const credential = await BastionWebAuthn.get(options);
      offer(await Bastion.api("/api/v1/login/webauthn/complete", {credential, next}));
    } catch (error) {
      Bastion.showError("login-error", error.message || String(error));
    }
  });
})();
