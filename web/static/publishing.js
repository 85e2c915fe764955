// Publishing pages: streamed uploads with a progress bar, publish and grant forms, download decisions.
"use strict";

(() => {
  const status = document.getElementById("upload-status");
  const progress = document.getElementById("upload-progress");
  const percent = document.getElementById("upload-percent");
  const result = document.getElementById("upload-result");

  function localToIso(value) {
    // datetime-local has no zone: it is the browser's local time, sent as UTC.
    return value ? new Date(value).toISOString() : undefined;
  }

  function upload(form) {
    const file = form.elements.file.files[0];
    if (!file) return;
    const body = new FormData();
    // Small fields first and the file last: the server checks them before it reads a byte of the file.
    for (const element of form.elements) {
      if (!element.name || element.type === "file" || element.type === "submit" || element.value === "") continue;
      body.append(element.name, element.value);
    }
    body.append("size", String(file.size));  // lets the server tell a cut-off upload from a short file
    body.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.dataset.api);
    xhr.setRequestHeader("X-CSRF-Token", Bastion.csrf());
    status.hidden = false;
    progress.value = 0;
    progress.dataset.events = "0";
    result.textContent = "";
    Bastion.showError("admin-error", "");
    xhr.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      const share = Math.floor((event.loaded / event.total) * 100);
      progress.value = share;
      progress.dataset.events = String(Number(progress.dataset.events) + 1);
      percent.textContent = share + " %";
    });
    xhr.addEventListener("load", () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch (e) { data = {}; }
      if (xhr.status !== 200) {
        progress.dataset.state = "failed";
        result.textContent = "";
        Bastion.showError("admin-error", data.error || ("upload failed: " + xhr.status));
        return;
      }
      progress.value = 100;
      percent.textContent = "100 %";
      progress.dataset.state = "done";
      result.textContent = "stored " + data.name + " version " + data.version + " (" +
        data.files.map((f) => f.path + ", " + f.size + " bytes, sha256 " + f.sha256.slice(0, 12)).join("; ") + ")";
      const link = document.createElement("a");
      link.href = "/admin/datasets/" + encodeURIComponent(data.name);
      link.id = "upload-open";
      link.textContent = " open";
      result.append(link);
    });
    xhr.addEventListener("error", () => {
      progress.dataset.state = "failed";
      Bastion.showError("admin-error", "the upload was interrupted; nothing was stored");
    });
    xhr.send(body);
  }

  function jsonBody(form) {
    const body = {};
    for (const element of form.elements) {
      if (!element.name || element.type === "submit" || element.value === "") continue;
      if (element.type === "checkbox") continue;
      if (element.type === "datetime-local") body[element.name] = localToIso(element.value);
      else if (element.type === "number" || element.name === "min_level") body[element.name] = Number(element.value);
      else body[element.name] = element.value;
    }
    if ("subject_kind" in body) {  // the grant form: one of user or group
      body[body.subject_kind] = body.subject;
      delete body.subject_kind;
      delete body.subject;
      body.watermark = !form.elements.no_watermark.checked;
    }
    return body;
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (form.classList.contains("upload-form")) {
      event.preventDefault();
      upload(form);
    } else if (form.classList.contains("json-form") || form.classList.contains("decide-form")) {
      event.preventDefault();
      let body = jsonBody(form);
      if (form.classList.contains("decide-form")) {
        body = {approve: event.submitter && event.submitter.value === "true", reason: form.elements.reason.value};
      }
      try {
        await Bastion.api(form.dataset.api, body);
        window.location.reload();
      } catch (error) {
        Bastion.showError("admin-error", error.message);
      }
    }
  });
})();
