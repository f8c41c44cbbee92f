// The tilebox console's progressive enhancement. Pages work without it; with it, views
// refresh while jobs run. The server renders every piece of HTML (escaped there); this
// script only swaps server fragments in, and never builds HTML from data.
"use strict";

const FRAGMENT = { "X-Tilebox-Fragment": "1" };

/** Fetches a server fragment; a lost session reloads the page, which shows the login. */
async function fragment(url) {
  const response = await fetch(url, { headers: FRAGMENT, credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) {
    window.location.reload();
    throw new Error("signed out");
  }
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.text();
}

/** Shows `<time datetime>` in the browser's local time zone. */
function localTimes(root) {
  for (const element of root.querySelectorAll("time[datetime]")) {
    const when = new Date(element.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime())) {
      element.title = element.textContent;
      element.textContent = when.toLocaleString();
    }
  }
}

/**
 * Elements with `data-poll="<url>"` are refreshed from that URL every `data-poll-ms`
 * milliseconds (default 2000) until the fragment they get no longer carries `data-poll`
 * (a finished job stops polling).
 */
function poll(element) {
  if (element.dataset.polling) return;
  element.dataset.polling = "1";
  const period = Number(element.dataset.pollMs || 2000);
  const tick = async () => {
    if (!element.isConnected || !element.dataset.poll) return;
    if (!document.hidden) {
      try {
        const html = await fragment(element.dataset.poll);
        const template = document.createElement("template");
        template.innerHTML = html;
        const next = template.content.firstElementChild;
        if (next && next.tagName === element.tagName && next.className === element.className) {
          element.replaceWith(next);
          // The new element polls on (enhance starts it) unless it no longer asks to.
          enhance(next.parentElement || document);
          return;
        }
      } catch (error) {
        console.warn("refresh failed", error);
      }
    }
    window.setTimeout(tick, period);
  };
  window.setTimeout(tick, period);
}

/** Wires everything under `root` (the document, or a fragment just swapped in). */
function enhance(root) {
  localTimes(root);
  for (const element of root.querySelectorAll("[data-poll]")) poll(element);
}

document.addEventListener("DOMContentLoaded", () => enhance(document));
