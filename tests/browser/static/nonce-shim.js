"use strict";
// Gives every <style> element that scripts create the nonce this script was loaded with, so that
// xterm.js's own <style> elements pass `style-src 'nonce-…'` without 'unsafe-inline'. Load it with
// <script src nonce=…> before xterm.js. Styles injected as markup (innerHTML) still get no nonce.
(function () {
  const nonce = document.currentScript && document.currentScript.nonce;
  if (!nonce) return;
  const createElement = Document.prototype.createElement;
  Document.prototype.createElement = function (name, options) {
    const element = createElement.call(this, name, options);
    if (String(name).toLowerCase() === "style") element.nonce = nonce;
    return element;
  };
})();
