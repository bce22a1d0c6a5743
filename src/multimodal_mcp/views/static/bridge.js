// The view's side of the MCP Apps bridge: JSON-RPC 2.0 over postMessage with the host window.
// Requests go up (ui/initialize, tools/call, resources/read); the host answers them and sends
// notifications down (ui/notifications/tool-input, ui/notifications/tool-result, ...).
"use strict";
const bridge = (() => {
  const pending = new Map();
  const listeners = {};
  let lastId = 0;

  function post(message) {
    window.parent.postMessage({ jsonrpc: "2.0", ...message }, "*");
  }

  window.addEventListener("message", (event) => {
    if (event.source !== window.parent) return;
    const msg = event.data;
    if (!msg || msg.jsonrpc !== "2.0") return;
    if (msg.method === undefined && pending.has(msg.id)) {
      const { resolve, reject } = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.error) reject(new Error(msg.error.message || "the host refused the request"));
      else resolve(msg.result);
    } else if (msg.method !== undefined) {
      for (const listener of listeners[msg.method] || []) listener(msg.params || {});
      if (msg.id !== undefined) post({ id: msg.id, result: {} }); // e.g. ui/resource-teardown
    }
  });

  function request(method, params) {
    const id = ++lastId;
    return new Promise((resolve, reject) => {
      pending.set(id, { resolve, reject });
      post({ id, method, params });
    });
  }

  function on(method, listener) {
    (listeners[method] = listeners[method] || []).push(listener);
  }

  function textOf(result) {
    return (result.content || []).filter((c) => c.type === "text").map((c) => c.text).join("\n");
  }

  // A tool call through the host; a tool error becomes a rejected promise with the tool's message.
  async function callTool(name, args) {
    const result = await request("tools/call", { name, arguments: args });
    if (result.isError) throw new Error(textOf(result));
    return result;
  }

  // A stored image (image://<id>) read through the host, as a data: URI.
  async function readImage(uri) {
    const result = await request("resources/read", { uri });
    const item = result.contents[0];
    return `data:${item.mimeType};base64,${item.blob}`;
  }

  function reportSize() {
    const el = document.documentElement;
    post({ method: "ui/notifications/size-changed", params: { width: el.scrollWidth, height: el.scrollHeight } });
  }

  async function connect(name) {
    const host = await request("ui/initialize", {
      protocolVersion: "2026-01-26",
      appInfo: { name, version: "1" },
      appCapabilities: {},
    });
    post({ method: "ui/notifications/initialized", params: {} });
    new ResizeObserver(reportSize).observe(document.body);
    return host;
  }

  return { on, request, callTool, readImage, textOf, connect };
})();

// Small DOM helper: el("div.card", {title: "x"}, child, "text")
function el(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag);
  if (classes.length) node.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function setStatus(text, isError) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

// A result's structured content; a call that became a job (JobPending) is followed with get_job
// until it finishes.
async function settled(result) {
  let content = result.structuredContent || {};
  while (content.job && !content.result) {
    if (content.job.status && content.job.status !== "running") throw new Error(content.job.error || "the job stopped");
    setStatus(`Still running as job ${content.job.id}…`);
    content = (await bridge.callTool("get_job", { job_id: content.job.id, wait_seconds: 30 })).structuredContent;
  }
  return content.result || content;
}
