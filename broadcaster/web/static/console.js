// Broadcaster console: live refresh of the parts marked data-live="<fragment url>", and
// forms sent once.
// Every data-every seconds (3 by default) the fragment is fetched again and swapped in,
// while the tab is visible. A 401 means the session ended: go to the login page.
(function () {
  "use strict";
  var last = new WeakMap();  // element -> the HTML it was last given
  function refresh(el) {
    if (document.hidden) return Promise.resolve();
    return fetch(el.dataset.live, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (res) {
        if (res.status === 401) {
          window.location.assign("/console/login?next=" + encodeURIComponent(window.location.pathname));
          return null;
        }
        return res.ok ? res.text() : null;
      })
      .then(function (html) {
        if (typeof html === "string" && last.get(el) !== html) {
          last.set(el, html);
          el.innerHTML = html;
          el.dataset.refreshed = String(Date.now());
        }
      })
      .catch(function () { /* the daemon may be restarting: try again next time */ });
  }
  // A form marked data-once (declare, update, resolve) is sent once: its submit button is
  // disabled as it goes. The server makes it once all the same (the form's nonce).
  function once(event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-once")) return;
    if (form.dataset.sent) { event.preventDefault(); return; }
    form.dataset.sent = "1";
    window.setTimeout(function () {
      form.querySelectorAll("button[type=submit], button:not([type])").forEach(function (b) {
        b.disabled = true;
        b.setAttribute("aria-busy", "true");
      });
    }, 0);
  }
  document.addEventListener("submit", once);
  function start() {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var every = Math.max(1, Number(el.dataset.every) || 3) * 1000;
      var tick = function () { refresh(el).then(function () { window.setTimeout(tick, every); }); };
      window.setTimeout(tick, every);
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
