// Small DOM helpers. Text always goes in through textContent, never as HTML.

/** The element with this id; throws early when a page and its script disagree. */
export function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`missing #${id}`);
  return element;
}

/** Build an element: el("li", {class: "x", dataset: {id: "1"}}, "text", child). */
export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name === "text") element.textContent = value;
    else if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

/** Show exactly one of a group of sections (screens), and move focus to its heading. */
export function showScreen(screens, name, { focus = true } = {}) {
  let shown = null;
  for (const [key, element] of Object.entries(screens)) {
    element.hidden = key !== name;
    if (key === name) shown = element;
  }
  if (shown && focus) {
    const heading = shown.querySelector("h1, h2");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: false });
    }
  }
  return shown;
}

/** Say something to screen-reader users through a polite live region. */
export function announce(region, text) {
  region.textContent = "";
  // A new text node after a tick, so the same sentence twice is still announced.
  window.setTimeout(() => {
    region.textContent = text;
  }, 50);
}

/** A random id for Idempotency-Key headers; works outside secure contexts too. */
export function randomId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Copy text to the clipboard; false when the browser refuses (the caller says "copy it"). */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}

/** Offer a Blob as a download under this file name. */
export function downloadBlob(blob, fileName) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: fileName, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** A modal yes/no question; resolves to true when confirmed. */
export function confirmDialog({ title, text, confirm = "Confirm", cancel = "Cancel", danger = false }) {
  return new Promise((resolve) => {
    const heading = el("h2", { id: "confirm-title", text: title });
    const yes = el("button", { value: "yes", class: danger ? "danger" : "primary", text: confirm });
    const no = el("button", { value: "no", text: cancel, autofocus: true });
    const dialog = el(
      "dialog",
      { "aria-labelledby": "confirm-title" },
      el("form", { method: "dialog", class: "stack" }, heading, el("p", { text }), el("div", { class: "row" }, yes, no)),
    );
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "yes");
    });
    document.body.append(dialog);
    dialog.showModal();
    no.focus();
  });
}
