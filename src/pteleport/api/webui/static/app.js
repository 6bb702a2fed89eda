// pteleport web UI: copy buttons and Connect commands that follow the chosen db user and name.
// Everything works without this file: the forms submit, the commands are in the page.
"use strict";

function copyText(text, button) {
  const done = () => {
    const label = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => fallbackCopy(text, done));
  } else {
    fallbackCopy(text, done);
  }
}

function fallbackCopy(text, done) {
  const area = document.createElement("textarea");
  area.value = text;
  document.body.appendChild(area);
  area.select();
  try { document.execCommand("copy"); done(); } finally { area.remove(); }
}

function updateConnect(box) {
  const user = box.querySelector("[data-part=user]");
  const name = box.querySelector("[data-part=name]");
  const route = "--db-user=" + ((user && user.value.trim()) || "DB_USER") +
    " --db-name=" + ((name && name.value.trim()) || "DB_NAME");
  for (const code of box.querySelectorAll("code[data-template]")) {
    code.textContent = code.dataset.template + " " + route;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button.copy[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", () => {
      const source = document.getElementById(button.dataset.copy);
      if (source) { copyText(source.textContent, button); }
    });
  }
  for (const box of document.querySelectorAll(".connect")) {
    for (const field of box.querySelectorAll("[data-part]")) {
      field.addEventListener("input", () => updateConnect(box));
      field.addEventListener("change", () => updateConnect(box));
    }
    for (const hide of box.querySelectorAll(".js-hide")) { hide.hidden = true; }
  }
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") { return; }
    for (const open of document.querySelectorAll("details.dialog[open]")) { open.open = false; }
  });
});
