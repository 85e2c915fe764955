// Device enrolment from the admin page; an issued client certificate is offered for download once.
"use strict";

document.getElementById("device-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const body = {user: form.elements.user.value, name: form.elements.name.value,
                issue_cert: form.elements.issue_cert.checked};
  if (form.elements.macs.value) body.macs = [form.elements.macs.value];
  try {
    const result = await Bastion.api("/api/v1/admin/devices", body);
    const out = document.getElementById("device-result");
    out.hidden = false;
    out.textContent = "Device " + result.id + " enrolled (pending approval).";
    if (result.p12_base64) {
      const bytes = Uint8Array.from(atob(result.p12_base64), (c) => c.charCodeAt(0));
      const link = document.createElement("a");
      link.href = URL.createObjectURL(new Blob([bytes], {type: "application/x-pkcs12"}));
      link.download = body.user + "-" + body.name + ".p12";
      link.textContent = "Download the client certificate";
      out.append(" ", link, " — import password (shown once): ", result.p12_password);
    }
  } catch (error) {
    Bastion.showError("admin-error", error.message);
  }
});
