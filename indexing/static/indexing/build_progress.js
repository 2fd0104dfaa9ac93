// Index builds page: follow the queued and running builds and reload when one finishes or a new
// one appears. A static file (not an inline script) so the page runs under the
// Content-Security-Policy; the progress URL comes from the script tag's data-progress-url.
(function () {
  "use strict";
  const url = document.currentScript.dataset.progressUrl;
  const pending = () => Array.from(document.querySelectorAll(".build-status"))
    .filter(el => /Queued|Running/.test(el.textContent)).map(el => el.dataset.build);
  const watched = pending();
  if (!url || !watched.length) return;
  async function poll() {
    const query = watched.map(id => "id=" + encodeURIComponent(id)).join("&");
    const response = await fetch(url + "?" + query, {credentials: "same-origin"});
    if (!response.ok) return setTimeout(poll, 3000);
    const data = await response.json();
    let finished = false;
    for (const b of data.builds) {
      const bar = document.querySelector('progress[data-build="' + b.id + '"]');
      const text = document.querySelector('.build-progress-text[data-build="' + b.id + '"]');
      if (bar) { bar.max = Math.max(b.total, 1); bar.value = b.status === "ready" ? b.total : b.done; }
      if (text) text.textContent = b.total ? (b.status === "ready" ? b.total : b.done) + "/" + b.total : b.status;
      if (b.status === "ready" || b.status === "failed") finished = true;
      if (!bar && (b.status === "queued" || b.status === "running")) finished = true;  // a new build appeared
    }
    if (finished) { window.location.reload(); return; }
    setTimeout(poll, 1500);
  }
  setTimeout(poll, 1000);
})();
