// API-key login: the handshake is done here, so the private key never
// leaves the browser; only the resulting session goes to /login.
"use strict";
(() => {
  const form = document.getElementById("apikey-form");
  if (!form) return;
  const status = document.getElementById("apikey-status");

  function der(tag, bytes) {
    const n = bytes.length;
    const len = n < 128 ? [n] : n < 256 ? [0x81, n] : n < 65536 ? [0x82, n >> 8, n & 255] : [0x83, n >> 16, (n >> 8) & 255, n & 255];
    return new Uint8Array([tag, ...len, ...bytes]);
  }
  // PKCS#1 "RSA PRIVATE KEY" → PKCS#8, which WebCrypto imports.
  function pkcs8(pem) {
    const b64 = pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
    const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    if (!pem.includes("RSA PRIVATE KEY")) return raw;
    const alg = new Uint8Array([0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00]);
    return der(0x30, [0x02, 0x01, 0x00, ...alg, ...der(0x04, raw)]);
  }

  form.addEventListener("submit", async (e) => {
    if (document.getElementById("session").value) return;
    e.preventDefault();
    const id = document.getElementById("key-id").value.trim();
    try {
      status.textContent = "Logging in…";
      const hand = await fetch("/tap/v1/hand", { method: "POST", body: JSON.stringify({ id }) });
      if (!hand.ok) throw new Error("the controller refused the key id");
      const enc = Uint8Array.from(atob(await hand.text()), (c) => c.charCodeAt(0));
      const key = await crypto.subtle.importKey("pkcs8", pkcs8(document.getElementById("key-pem").value), { name: "RSA-OAEP", hash: "SHA-256" }, false, ["decrypt"]);
      const secret = new TextDecoder().decode(await crypto.subtle.decrypt({ name: "RSA-OAEP" }, key, enc));
      const shake = await fetch("/tap/v1/shake", { method: "POST", body: JSON.stringify({ id, secret }) });
      if (!shake.ok) throw new Error("the handshake failed");
      const sess = await shake.json();
      document.getElementById("session").value = btoa(JSON.stringify(sess.data));
      document.getElementById("key-pem").value = "";
      form.submit();
    } catch (err) {
      status.textContent = err.message;
    }
  });
})();
