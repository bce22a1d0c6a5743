// The mask painter: brush and eraser over an image on a canvas the image's size; the mask is the
// painted pixels in white on black, saved through the app-only save_mask tool.
"use strict";
const painter = (() => {
  const canvas = () => document.getElementById("paint-canvas");
  let erasing = false;

  function open(src, width, height) {
    const c = canvas();
    c.width = width;
    c.height = height;
    document.getElementById("paint-image").src = src;
    clear();
  }

  function clear() {
    const c = canvas();
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
  }

  function setEraser(on) {
    erasing = on;
    document.getElementById("brush").classList.toggle("on", !on);
    document.getElementById("eraser").classList.toggle("on", on);
  }

  function point(event) {
    const c = canvas();
    const rect = c.getBoundingClientRect();
    return [((event.clientX - rect.left) * c.width) / rect.width, ((event.clientY - rect.top) * c.height) / rect.height];
  }

  function stroke(from, to) {
    const c = canvas();
    const ctx = c.getContext("2d");
    const scale = c.width / c.getBoundingClientRect().width;
    ctx.globalCompositeOperation = erasing ? "destination-out" : "source-over";
    ctx.strokeStyle = "rgb(255, 40, 80)";
    ctx.lineWidth = Number(document.getElementById("brush-size").value) * scale;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...from);
    ctx.lineTo(...to);
    ctx.stroke();
  }

  // The mask as a PNG data: URI: white where painted, black elsewhere, the image's size.
  function maskDataUri() {
    const c = canvas();
    const painted = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    const out = document.createElement("canvas");
    out.width = c.width;
    out.height = c.height;
    const ctx = out.getContext("2d");
    const mask = ctx.createImageData(c.width, c.height);
    for (let i = 0; i < painted.length; i += 4) {
      const v = painted[i + 3] >= 128 ? 255 : 0;
      mask.data[i] = mask.data[i + 1] = mask.data[i + 2] = v;
      mask.data[i + 3] = 255;
    }
    ctx.putImageData(mask, 0, 0);
    return out.toDataURL("image/png");
  }

  function wire() {
    const c = canvas();
    let last = null;
    c.addEventListener("pointerdown", (event) => {
      c.setPointerCapture(event.pointerId);
      last = point(event);
      stroke(last, last);
    });
    c.addEventListener("pointermove", (event) => {
      if (last === null) return;
      const next = point(event);
      stroke(last, next);
      last = next;
    });
    const stop = () => { last = null; };
    c.addEventListener("pointerup", stop);
    c.addEventListener("pointercancel", stop);
    document.getElementById("brush").addEventListener("click", () => setEraser(false));
    document.getElementById("eraser").addEventListener("click", () => setEraser(true));
    document.getElementById("clear").addEventListener("click", clear);
  }

  return { open, wire, maskDataUri };
})();
