// Index builds page: follow the queued and running builds (progress bar and status column
// together), say when one becomes ready or fails, and reload when one finishes or a new one
// appears (for the counts and the active flag). A static file (not an inline script) so the page
// runs under the Content-Security-Policy; the progress URL comes from the script tag's
// data-progress-url. Its words come from Django's JavaScript catalog (jsi18n/, loaded before it).
(function () {
  "use strict";
  const gettext = window.gettext || function (text) { return text; };
  const interpolate = window.interpolate || function (format, values) {
    return format.replace(/%\(\w+\)s/g, match => String(values[match.slice(2, -2)]));
  };
  const url = document.currentScript.dataset.progressUrl;
  const announcement = document.getElementById("build-announcement");
  // The message outlives the reload that follows it: it is kept for this tab until shown once.
  const STORED = "simsearch.buildAnnouncement";
  function announce(text, failed) {
    if (!announcement) return;
    announcement.classList.toggle("failed", failed);
    announcement.textContent = text;
  }
  const stored = sessionStorage.getItem(STORED);
  if (stored) {
    sessionStorage.removeItem(STORED);
    const message = JSON.parse(stored);
    announce(message.text, message.failed);
  }

  const PENDING = ["queued", "running"];
  const statusOf = el => Array.from(el.classList).find(c => c.startsWith("build-status-")).slice("build-status-".length);
  const watched = Array.from(document.querySelectorAll(".build-status"))
    .filter(el => PENDING.includes(statusOf(el))).map(el => el.dataset.build);
  if (!url || !watched.length) return;

  function showStatus(b) {
    const label = document.querySelector('.build-status[data-build="' + b.id + '"]');
    if (!label) return;
    label.classList.remove("build-status-" + statusOf(label));
    label.classList.add("build-status-" + b.status);
    label.textContent = b.status_label;
  }

  function finishedMessage(b) {
    const values = {id: b.id, image_type: b.image_type};
    if (b.status === "failed") {
      const text = gettext("Build %(id)s (%(image_type)s) failed; the build that was active still answers searches.");
      return {text: interpolate(text, values, true), failed: true};
    }
    const text = b.is_active
      ? gettext("Build %(id)s (%(image_type)s) is ready and now answers searches.")
      : gettext("Build %(id)s (%(image_type)s) is ready.");
    return {text: interpolate(text, values, true), failed: false};
  }

  async function poll() {
    const query = watched.map(id => "id=" + encodeURIComponent(id)).join("&");
    const response = await fetch(url + "?" + query, {credentials: "same-origin"});
    if (!response.ok) return setTimeout(poll, 3000);
    const data = await response.json();
    let finished = false;
    const messages = [];
    for (const b of data.builds) {
      const bar = document.querySelector('progress[data-build="' + b.id + '"]');
      const text = document.querySelector('.build-progress-text[data-build="' + b.id + '"]');
      if (bar) { bar.max = Math.max(b.total, 1); bar.value = b.status === "ready" ? b.total : b.done; }
      if (text) text.textContent = b.total ? (b.status === "ready" ? b.total : b.done) + "/" + b.total : b.status_label;
      showStatus(b);
      if (b.status === "ready" || b.status === "failed") {
        finished = true;
        if (watched.includes(String(b.id))) messages.push(finishedMessage(b));
      }
      if (!bar && PENDING.includes(b.status)) finished = true;  // a new build appeared
    }
    if (messages.length) {
      const message = {text: messages.map(m => m.text).join(" "), failed: messages.some(m => m.failed)};
      announce(message.text, message.failed);
      sessionStorage.setItem(STORED, JSON.stringify(message));
    }
    if (finished) { window.location.reload(); return; }
    setTimeout(poll, 1500);
  }
  setTimeout(poll, 1000);
})();
