// Search console: a photo can be dropped on the form or pasted from the clipboard (Ctrl+V), as
// well as picked with the file field. Either way it lands in that file field and is posted with the
// form, so the server sees one and the same upload.
// Loaded in the page's head with the form's media: it waits for the form.
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  const translate = window.gettext || function (text) { return text; };
  const input = document.getElementById("id_photo");
  const form = document.getElementById("search-console-form");
  if (!input || !form || typeof DataTransfer === "undefined") {
    return;
  }
  const row = input.closest(".form-row") || form;
  row.classList.add("photo-drop-target");
  const hint = document.createElement("p");
  hint.className = "help photo-drop-hint";
  hint.setAttribute("aria-live", "polite");
  hint.textContent = translate("…or drop a photo anywhere on this form, or paste one from the clipboard (Ctrl+V).");
  row.appendChild(hint);

  function usePhoto(files, how) {
    const photo = Array.from(files || []).find(function (file) { return file.type.indexOf("image/") === 0; });
    if (!photo) {
      hint.textContent = translate("That is not an image file.");
      return false;
    }
    const transfer = new DataTransfer();
    transfer.items.add(photo);
    input.files = transfer.files;
    // The photo is now the query: clear the text so the form is not refused for two queries.
    const text = document.getElementById("id_text");
    if (text) {
      text.value = "";
    }
    const imageId = document.getElementById("id_image_id");
    if (imageId) {
      imageId.value = "";
    }
    hint.textContent = how + ": " + photo.name;
    return true;
  }

  form.addEventListener("dragover", function (event) {
    event.preventDefault();
    row.classList.add("dragging");
  });
  form.addEventListener("dragleave", function () {
    row.classList.remove("dragging");
  });
  form.addEventListener("drop", function (event) {
    event.preventDefault();
    row.classList.remove("dragging");
    usePhoto(event.dataTransfer && event.dataTransfer.files, translate("Dropped"));
  });
  document.addEventListener("paste", function (event) {
    const files = event.clipboardData && event.clipboardData.files;
    if (files && files.length && usePhoto(files, translate("Pasted"))) {
      event.preventDefault();
    }
  });
});
