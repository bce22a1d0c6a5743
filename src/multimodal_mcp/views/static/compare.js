// The compare view: compare_images' result as a swipe slider or side by side, the heat map as an
// overlay with an opacity control, the changed-region boxes, the metrics and the narrative.
"use strict";
const $ = (id) => document.getElementById(id);
let comparison = null;

function setSplit(percent) {
  const p = Math.max(0, Math.min(100, percent));
  $("split").value = String(p);
  $("img-b").style.clipPath = `inset(0 0 0 ${p}%)`;
  $("divider").style.left = `${p}%`;
}

function boxes(regions, width, height) {
  return regions.map((r) => el("div.box", {
    style: `left:${(100 * r.x) / width}%;top:${(100 * r.y) / height}%;` +
      `width:${(100 * r.width) / width}%;height:${(100 * r.height) / height}%`,
    title: `${r.width}x${r.height} at (${r.x}, ${r.y}), ${(100 * r.area_fraction).toFixed(1)}% of the image changed`,
  }));
}

function showHeat() {
  const heat = $("img-heat");
  heat.hidden = !$("heat-on").checked;
  heat.style.opacity = String(Number($("opacity").value) / 100);
}

function showBoxes() {
  document.body.classList.toggle("regions-hidden", !$("boxes-on").checked);
}

function mode(name) {
  $("swipe").hidden = name !== "swipe";
  $("side").hidden = name !== "side";
  $("mode-swipe").classList.toggle("on", name === "swipe");
  $("mode-side").classList.toggle("on", name === "side");
}

function metrics(c) {
  const rows = [
    ["SSIM", c.ssim.toFixed(3)],
    ["pixels changed", `${(100 * c.pixel_difference).toFixed(2)}%`],
    ["CLIP similarity", `${c.clip_similarity.toFixed(3)} (${c.clip_model})`],
    ["changed regions", String(c.changed_regions.length)],
    ["before", `${c.image_a.uri} (${c.image_a.width}x${c.image_a.height})`],
    ["after", `${c.image_b.uri} (${c.image_b.width}x${c.image_b.height})${c.resized ? ", resized to match" : ""}`],
  ];
  $("metrics").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-metric": k }, v)]));
  $("narrative").textContent = c.narrative ? `What changed (${c.model}): ${c.narrative}` : "";
}

async function show(result) {
  const c = await settled(result);
  comparison = c;
  metrics(c);
  const [a, b, heat] = await Promise.all([c.image_a, c.image_b, c.diff_image].map((ref) => bridge.readImage(ref.uri)));
  const loaded = [["img-a", a], ["img-b", b], ["img-heat", heat]].map(([id, src]) => new Promise((resolve) => {
    $(id).onload = resolve;
    $(id).src = src;
  }));
  const { width, height } = c.image_a;
  $("regions").replaceChildren(...boxes(c.changed_regions, width, height));
  $("side-a").replaceChildren(el("img", { src: a, alt: "before" }), ...boxes(c.changed_regions, width, height));
  $("side-b").replaceChildren(el("img", { src: b, alt: "after" }), ...boxes(c.changed_regions, width, height));
  $("caption-a").textContent = `before: ${c.image_a.uri}`;
  $("caption-b").textContent = `after: ${c.image_b.uri}`;
  await Promise.all(loaded);
  setStatus(bridge.textOf(result).split("\n")[0]);
  document.body.dataset.ready = "true";
}

$("split").addEventListener("input", () => setSplit(Number($("split").value)));
$("stage").addEventListener("pointerdown", (event) => {
  const stage = $("stage");
  const move = (e) => {
    const rect = stage.getBoundingClientRect();
    setSplit((100 * (e.clientX - rect.left)) / rect.width);
  };
  move(event);
  stage.setPointerCapture(event.pointerId);
  stage.onpointermove = move;
  stage.onpointerup = () => { stage.onpointermove = null; };
});
$("heat-on").addEventListener("change", showHeat);
$("opacity").addEventListener("input", () => { $("heat-on").checked = true; showHeat(); });
$("boxes-on").addEventListener("change", showBoxes);
$("mode-swipe").addEventListener("click", () => mode("swipe"));
$("mode-side").addEventListener("click", () => mode("side"));
setSplit(50);

bridge.on("ui/notifications/tool-result", (result) => {
  show(result).catch((error) => setStatus(String(error.message || error), true));
});
bridge.connect("multimodal-mcp compare").catch((error) => setStatus(String(error), true));
