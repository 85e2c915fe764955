// Approve an SSH step-up with a security key.
"use strict";

document.getElementById("approve-button").addEventListener("click", async () => {
  const token = document.getElementById("approve").dataset.token;
  try {
    const options = await Bastion.api("/api/v1/approvals/" + token + "/begin", {});
    const credential = await BastionWebAuthn.get(options);
    await Bastion.api("/api/v1/approvals/" + token + "/complete", {credential});
    document.getElementById("approve-button").hidden = true;
    document.getElementById("approved").hidden = false;
  } catch (error) {
    Bastion.showError("approve-error", error.message || String(error));
  }
});
