// The gallery view: a generation's images and the caller's earlier ones, with their prompt, seed,
// parameters and verification; actions call the server's tools through the host.
"use strict";
const $ = (id) => document.getElementById(id);
const items = new Map(); // id -> {uri, width, height, prompt, seed, model, parameters, verification, src}
let selected = []; // ids, oldest first, at most 2
let maskUri = null;

function facts(item) {
  const rows = [["id", item.uri], ["size", `${item.width}x${item.height}`]];
  if (item.seed !== null && item.seed !== undefined) rows.push(["seed", String(item.seed)]);
  if (item.model) rows.push(["model", item.model]);
  if (item.verification) {
    const v = item.verification;
    const verdict = el(`span.${v.passed ? "pass" : "fail"}`, {}, v.passed ? "passed" : "failed");
    const missing = v.missing_labels.length ? `, missing: ${v.missing_labels.join(", ")}` : "";
    rows.push(["verified", el("span", {}, verdict, ` (score ${v.prompt_score.toFixed(3)}${missing})`)]);
  }
  return rows;
}

function factList(rows) {
  return el("dl", {}, ...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function card(item) {
  const node = el("div.card", { "data-id": item.id, onclick: () => toggle(item.id) },
    el("img", { src: item.src, alt: item.prompt || item.uri }),
    factList(facts(item)),
    el("button.open", { onclick: (e) => { e.stopPropagation(); openFull(item.id); } }, "Full size"));
  return node;
}

function add(item, grid, first) {
  items.set(item.id, item);
  const node = card(item);
  if (first) $(grid).prepend(node);
  else $(grid).append(node);
}

function toggle(id) {
  selected = selected.includes(id) ? selected.filter((s) => s !== id) : [...selected, id].slice(-2);
  for (const node of document.querySelectorAll(".card")) node.classList.toggle("selected", selected.includes(node.dataset.id));
  const one = selected.length >= 1;
  for (const button of ["variation", "init", "reference", "paint"]) $(button).disabled = !one;
  $("compare").disabled = selected.length !== 2;
  if (one && items.get(selected.at(-1)).prompt) $("prompt").value = items.get(selected.at(-1)).prompt;
}

async function openFull(id) {
  const item = items.get(id);
  $("full").src = await bridge.readImage(item.uri);
  const rows = [["prompt", item.prompt || ""], ...facts(item)];
  if (item.parameters) rows.push(["parameters", JSON.stringify(item.parameters)]);
  $("full-facts").replaceChildren(...factList(rows).childNodes);
  $("lightbox").hidden = false;
}

// A generation result's images as items; previews from the result's content when it has one per image.
async function generated(result, content) {
  const previews = (result.content || []).filter((c) => c.type === "image");
  const checks = new Map((content.verification || []).map((v) => [v.image_id, v]));
  return Promise.all(content.images.map(async (image, i) => ({
    ...image,
    prompt: content.parameters.prompt,
    model: content.model,
    parameters: content.parameters,
    verification: checks.get(image.id),
    src: previews.length === content.images.length
      ? `data:${previews[i].mimeType};base64,${previews[i].data}` : await bridge.readImage(image.uri),
  })));
}

async function earlier() {
  const result = await bridge.callTool("gallery_images", { limit: 24 });
  $("earlier").replaceChildren();
  for (const image of result.structuredContent.images) {
    if (!$("result").querySelector(`[data-id="${image.id}"]`)) add({ ...image, src: image.thumbnail }, "earlier");
  }
}

// Runs one action: a tool call whose result's images join "This result".
async function generate(tool, args) {
  setStatus(`Calling ${tool}…`);
  const result = await bridge.callTool(tool, args);
  const content = await settled(result);
  for (const item of (await generated(result, content)).reverse()) add(item, "result", true);
  setStatus(bridge.textOf(result).split("\n")[0]);
  return content;
}

function current() {
  return items.get(selected.at(-1));
}

function variationArgs(item) {
  const args = { prompt: $("prompt").value || item.prompt, num_images: 1 };
  if (item.model) args.model = item.model;
  if (item.seed !== null && item.seed !== undefined) args.seed = Math.floor(Math.random() * 2 ** 32);
  args.width = item.width;
  args.height = item.height;
  return args;
}

async function compareSelected() {
  const [a, b] = selected.map((id) => items.get(id).uri);
  setStatus("Calling compare_images…");
  const result = await bridge.callTool("compare_images", { image_a: a, image_b: b });
  const c = result.structuredContent;
  const heat = (result.content || []).find((x) => x.type === "image");
  $("comparison").replaceChildren(
    el("h2", {}, "Comparison"),
    factList([["SSIM", c.ssim.toFixed(3)], ["pixels changed", `${(100 * c.pixel_difference).toFixed(2)}%`],
      ["CLIP similarity", c.clip_similarity.toFixed(3)], ["changed regions", String(c.changed_regions.length)]]),
    heat ? el("img", { src: `data:${heat.mimeType};base64,${heat.data}`, alt: "difference heat map" }) : null);
  $("comparison").hidden = false;
  setStatus(bridge.textOf(result).split("\n")[0]);
}

async function paint() {
  const item = current();
  painter.open(await bridge.readImage(item.uri), item.width, item.height);
  maskUri = null;
  $("inpaint").disabled = true;
  $("painter").hidden = false;
  $("painter").dataset.image = item.uri;
}

async function saveMask() {
  setStatus("Saving the mask…");
  const result = await bridge.callTool("save_mask", { image: $("painter").dataset.image, mask: painter.maskDataUri() });
  maskUri = result.structuredContent.mask.uri;
  $("inpaint").disabled = false;
  setStatus(bridge.textOf(result));
}

function action(button, run) {
  $(button).addEventListener("click", () => {
    run().catch((error) => setStatus(String(error.message || error), true));
  });
}

action("variation", () => generate("generate_image", variationArgs(current())));
action("compare", compareSelected);
action("init", () => generate("controlled_generate", { prompt: $("prompt").value, init_image: current().uri }));
action("reference", () => generate("controlled_generate", { prompt: $("prompt").value, control_image: current().uri }));
action("paint", paint);
action("save-mask", saveMask);
action("inpaint", () => generate("controlled_generate", {
  prompt: $("prompt").value, init_image: $("painter").dataset.image, mask_image: maskUri,
}));
$("close-painter").addEventListener("click", () => { $("painter").hidden = true; });
$("close-full").addEventListener("click", () => { $("lightbox").hidden = true; });
painter.wire();

bridge.on("ui/notifications/tool-input", (params) => {
  if (params.arguments && params.arguments.prompt) $("prompt").value = params.arguments.prompt;
});
bridge.on("ui/notifications/tool-result", (result) => {
  (async () => {
    const content = await settled(result);
    $("result").replaceChildren();
    for (const item of await generated(result, content)) add(item, "result");
    setStatus(bridge.textOf(result).split("\n")[0]);
    await earlier();
    document.body.dataset.ready = "true";
  })().catch((error) => setStatus(String(error.message || error), true));
});
bridge.connect("multimodal-mcp gallery").catch((error) => setStatus(String(error), true));
