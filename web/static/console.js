// Shared console behaviour: JSON calls with the CSRF token, data-post buttons, API forms, logout.
"use strict";

const Bastion = (() => {
  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function setCsrf(token) {
    const meta = document.querySelector('meta[name="csrf-token"]');
    if (meta && token) meta.content = token;
  }

  async function api(path, body) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()},
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { data = {}; }
    if (data.csrf) setCsrf(data.csrf);
    if (!response.ok) {
      const error = new Error(data.error || response.statusText);
      error.status = response.status;
      error.data = data;
      throw error;
    }
    return data;
  }

  function showError(id, message) {
    const element = document.getElementById(id);
    if (!element) return;
    element.textContent = message;  // textContent: never markup
    element.hidden = !message;
  }

  function formData(form) {
    const body = {};
    for (const element of form.elements) {
      if (!element.name || element.type === "submit") continue;
      if (element.multiple) {
        body[element.name] = Array.from(element.selectedOptions).map((o) => o.value);
      } else if (element.value !== "") {
        body[element.name] = element.type === "number" ? Number(element.value) : element.value;
      }
    }
    return body;
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-post]");
    if (!button) return;
    let body = {};
    if (button.dataset.confirm === "reason") {
      const reason = window.prompt("Reason (shown to the user and audited):");
      if (reason === null) return;
      body = {reason};
    }
    try {
      await api(button.dataset.post, body);
      window.location.reload();
    } catch (error) {
      showError("admin-error", error.message);
      window.alert(error.message);
    }
  });

  document.addEventListener("submit", async (event) => {
    const form = event.target.closest("form.api-form");
    if (!form) return;
    event.preventDefault();
    try {
      await api(form.dataset.api, formData(form));
      window.location.reload();
    } catch (error) {
      showError("admin-error", error.message);
    }
  });

  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      try { await api("/api/v1/logout", {}); } finally { window.location.assign("/login"); }
    });
  }

  return {api, csrf, setCsrf, showError, formData};
})();
