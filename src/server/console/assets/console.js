// The tilebox console's progressive enhancement. Pages work without it; with it, views
// refresh while jobs run. The server renders every piece of HTML (escaped there); this
// script only swaps server fragments in, and never builds HTML from data.
"use strict";

const FRAGMENT = { "X-Tilebox-Fragment": "1" };

/**
 * Fetches a server fragment; a lost session reloads the page, which shows the login. An
 * error answer the server will give again (a 4xx: gone, refused, malformed) is marked
 * `permanent`, and refreshes stop on it instead of asking forever.
 */
async function fragment(url) {
  const response = await fetch(url, { headers: FRAGMENT, credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) {
    window.location.reload();
    throw new Error("signed out");
  }
  if (!response.ok) {
    const error = new Error(`${url}: ${response.status}`);
    error.permanent = response.status >= 400 && response.status < 500;
    throw error;
  }
  return response.text();
}

/** Shows `<time datetime>` in the browser's local time zone. */
function localTimes(root) {
  for (const element of root.querySelectorAll("time[datetime]")) {
    if (element.dataset.local) continue;
    element.dataset.local = "1";
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
    // Not while a confirmation is open: its form may be inside the element.
    if (!document.hidden && !document.querySelector("dialog[open]")) {
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
        if (error.permanent) return;
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
  enhanceJob(root);
}

document.addEventListener("DOMContentLoaded", () => {
  wireConfirm();
  enhance(document);
});

// ---- pages ----
// The job page: tabs, the task tree's expanders and "load more" rows, the task detail
// panel, the tree's refresh, log follow and level filter; and the confirmation dialog of
// every `form[data-confirm]`. Server fragments are parsed in a <template> and inserted.

const FINISHED = new Set(["completed", "failed", "canceled"]);

/** The nodes of a server fragment. */
function nodesOf(html) {
  const template = document.createElement("template");
  template.innerHTML = html;
  return template.content;
}

/** Whether the job on this page may still change (its header still polls). */
function jobRunning() {
  const header = document.querySelector("section.job-header");
  return Boolean(header && !FINISHED.has(header.dataset.state));
}

/** Called by `enhance` for every swapped-in piece. */
function enhanceJob(root) {
  const scope = root.querySelectorAll ? root : document;
  for (const table of scope.querySelectorAll("table.tasks[data-refresh]")) refreshTree(table);
  for (const box of scope.querySelectorAll("input#follow")) followLogs(box);
}

/** Opens a tab (or a filtered view of one) from its URL, without reloading the page. */
async function openTab(url, push) {
  const current = document.querySelector("section.tab");
  if (!current) {
    window.location.href = url;
    return;
  }
  const content = nodesOf(await fragment(url));
  const next = content.querySelector("section.tab");
  if (!next) throw new Error(`${url}: no tab in the answer`);
  // The tab may have been refreshed (replaced) while this was loading.
  (document.querySelector("section.tab") || current).replaceWith(next);
  for (const link of document.querySelectorAll("nav.tabs a[data-tab]")) {
    if (link.dataset.tab === next.dataset.tab) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (push) window.history.pushState({ tab: next.dataset.tab }, "", url);
  enhance(next.parentElement);
}

window.addEventListener("popstate", () => {
  if (document.querySelector("nav.tabs")) openTab(window.location.href, false).catch(() => window.location.reload());
});

/** Removes the rows below `row` in the tree (its loaded descendants and "more" rows). */
function collapse(row) {
  const depth = Number(row.dataset.depth);
  while (row.nextElementSibling && Number(row.nextElementSibling.dataset.depth) > depth) {
    row.nextElementSibling.remove();
  }
}

async function toggle(button) {
  if (button.dataset.loading) return;
  const row = button.closest("tr");
  if (button.getAttribute("aria-expanded") === "true") {
    collapse(row);
    button.setAttribute("aria-expanded", "false");
    return;
  }
  button.dataset.loading = "1";
  try {
    const rows = nodesOf(await fragment(button.dataset.children));
    localTimes(rows);
    // The tree's refresh may have replaced the row while this was loading.
    const current = row.isConnected
      ? row
      : document.querySelector(`tr.task[data-task="${row.dataset.task}"]`);
    if (!current) return;
    collapse(current);
    current.after(rows);
    const expander = current.querySelector("button.expand");
    if (expander) expander.setAttribute("aria-expanded", "true");
  } finally {
    delete button.dataset.loading;
  }
}

async function loadMore(link) {
  const row = link.closest("tr");
  const rows = nodesOf(await fragment(link.href));
  localTimes(rows);
  row.replaceWith(rows);
}

async function showDetail(url) {
  const slot = document.querySelector(".detail-slot");
  if (!slot) {
    window.location.href = url;
    return;
  }
  const panel = nodesOf(await fragment(url));
  localTimes(panel);
  slot.replaceChildren(panel);
}

document.addEventListener("click", async (event) => {
  const target = event.target.closest("button.expand, a.load-more, a.task-link, a.close-detail");
  if (!target || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  if (target.matches("a.close-detail") && !target.closest(".detail-slot")) return;
  event.preventDefault();
  try {
    if (target.matches("button.expand")) await toggle(target);
    else if (target.matches("a.load-more")) await loadMore(target);
    else if (target.matches("a.task-link")) await showDetail(target.href);
    else target.closest(".detail-slot").replaceChildren();
  } catch (error) {
    console.warn("could not load", error);
  }
});

document.addEventListener("click", (event) => {
  const link = event.target.closest("nav.tabs a[data-tab]");
  if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  event.preventDefault();
  openTab(link.href, true).catch(() => { window.location.href = link.href; });
});

/** The log level checkboxes filter at once. */
document.addEventListener("change", (event) => {
  const box = event.target.closest("form.log-filter input[name=level]");
  if (!box) return;
  const form = box.form;
  const query = new URLSearchParams(new FormData(form)).toString();
  openTab(`${form.getAttribute("action")}?${query}`, true).catch((error) => console.warn(error));
});

/**
 * While the job runs, refreshes the tree's loaded rows every 2 s (the roots and each
 * expanded task's first page), keeping what is expanded; one last time once it ended.
 */
function refreshTree(table) {
  if (table.dataset.refreshing) return;
  table.dataset.refreshing = "1";
  const tick = async () => {
    if (!table.isConnected) return;
    const running = jobRunning();
    if (!document.hidden) {
      try {
        const sources = [table.dataset.refresh];
        for (const button of table.querySelectorAll('button.expand[aria-expanded="true"]')) {
          sources.push(button.dataset.children);
        }
        for (const url of sources) {
          const content = nodesOf(await fragment(url));
          for (const fresh of content.querySelectorAll("tr.task")) {
            const old = table.querySelector(`tr.task[data-task="${fresh.dataset.task}"]`);
            if (!old) continue;
            const expanded = old.querySelector('button.expand[aria-expanded="true"]');
            const button = fresh.querySelector("button.expand");
            if (expanded && button) button.setAttribute("aria-expanded", "true");
            localTimes(fresh);
            old.replaceWith(fresh);
          }
        }
      } catch (error) {
        console.warn("refresh failed", error);
      }
    }
    if (running) window.setTimeout(tick, 2000);
  };
  window.setTimeout(tick, 2000);
}

/** Most log rows the page keeps while following; the oldest go first. */
const MAX_FOLLOWED_ROWS = 5000;

/**
 * While "Follow" is checked, appends the records after the last one shown, every 2 s. Once
 * the job has ended and a poll brought nothing new, following stops (the box unticks).
 */
function followLogs(box) {
  if (box.dataset.following) return;
  box.dataset.following = "1";
  const tick = async () => {
    if (!box.isConnected) return;
    const body = document.querySelector("table.logs tbody[data-rows]");
    if (box.checked && body && !document.hidden) {
      const running = jobRunning();
      try {
        const rows = body.querySelectorAll("tr.log-row");
        const last = rows.length ? rows[rows.length - 1].dataset.record : body.dataset.after;
        const url = body.dataset.rows + (last ? `&after=${encodeURIComponent(last)}` : "");
        const fresh = nodesOf(await fragment(url));
        if (fresh.querySelector("tr")) {
          localTimes(fresh);
          body.append(fresh);
          const empty = document.querySelector("p.no-logs");
          if (empty) empty.remove();
          const all = body.querySelectorAll("tr.log-row");
          for (let index = 0; index < all.length - MAX_FOLLOWED_ROWS; index += 1) all[index].remove();
        } else if (!running) {
          box.checked = false;
        }
      } catch (error) {
        console.warn("follow failed", error);
        if (error.permanent) box.checked = false;
      }
    }
    window.setTimeout(tick, 2000);
  };
  window.setTimeout(tick, 2000);
}

/** `form[data-confirm]` asks in the shared dialog first; "Confirm" submits it. */
function wireConfirm() {
  const dialog = document.querySelector("dialog.confirm");
  if (!dialog || typeof dialog.showModal !== "function") return;
  let pending = null;
  document.addEventListener("submit", (event) => {
    const form = event.target.closest("form[data-confirm]");
    if (!form) return;
    event.preventDefault();
    pending = form;
    dialog.querySelector(".confirm-text").textContent = form.dataset.confirm;
    dialog.showModal();
  });
  dialog.querySelector("[data-confirm-no]").addEventListener("click", () => {
    pending = null;
    dialog.close();
  });
  dialog.querySelector("[data-confirm-yes]").addEventListener("click", () => {
    const form = pending;
    pending = null;
    dialog.close();
    if (!form) return;
    if (!form.isConnected) document.body.append(form);
    form.submit(); // no submit event: not asked again
  });
  dialog.addEventListener("close", () => {
    pending = null;
  });
}
