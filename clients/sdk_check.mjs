#!/usr/bin/env node
// Drives multimodal-mcp with the official MCP TypeScript SDK client (@modelcontextprotocol/sdk).
//
//   node sdk_check.mjs --stdio -- <server command and arguments>   # the SDK spawns the server
//   node sdk_check.mjs --http http://127.0.0.1:8000/mcp            # a running streamable HTTP server
//
// Calls every tool with ids chained from one call to the next, reads an image:// resource back and
// checks it is a PNG of the reported size, checks progress notifications, cancels a running generation
// with an AbortSignal, and follows and cancels a job. Meant for the tiny profile, with the server's
// job_wait_seconds set to a few seconds (clients/tiny.toml): the generations it cancels (512 px,
// 100 steps) take about a minute on a CPU. Prints one line per check; exits 1 on the first failure.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const TOOLS = [
  "cancel_job",
  "clip_classify",
  "compare_images",
  "controlled_generate",
  "describe_image",
  "generate_image",
  "get_job",
  "list_models",
];
const CALL_TIMEOUT_MS = 180_000;

class CheckFailed extends Error {}

function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

function ok(message) {
  console.log(`ok   ${message}`);
}

function transportFrom(argv) {
  if (argv[0] === "--http" && argv.length === 2) {
    return [new StreamableHTTPClientTransport(new URL(argv[1])), `http ${argv[1]}`];
  }
  if (argv[0] === "--stdio" && argv[1] === "--" && argv.length > 2) {
    // The SDK passes a spawned server only a few variables by default; pass ours so that the server
    // runs in this environment (PYTHONPATH, HF_HUB_OFFLINE, ...). Its stderr (logs) is inherited.
    const transport = new StdioClientTransport({ command: argv[2], args: argv.slice(3), env: { ...process.env } });
    return [transport, "stdio"];
  }
  console.error("usage: node sdk_check.mjs --stdio -- <server command...> | --http <url>");
  process.exit(2);
}

function textOf(result) {
  return result.content.filter((block) => block.type === "text").map((block) => block.text).join(" ");
}

/** tools/call; a job handle (the call outlasted the server's wait) is followed with get_job, which
 *  reports the job's progress to the same callback. */
async function call(client, name, args, options = {}) {
  let result = await client.callTool({ name, arguments: args }, undefined, { timeout: CALL_TIMEOUT_MS, ...options });
  check(!result.isError, `${name} failed: ${textOf(result)}`);
  while (!name.endsWith("_job") && result.structuredContent?.job) {
    const { id } = result.structuredContent.job;
    result = await call(client, "get_job", { job_id: id, wait_seconds: 30 }, options);
    if (result.structuredContent.job.status === "done") {
      result = { ...result, structuredContent: result.structuredContent.result };
    }
  }
  check(result.structuredContent, `${name} returned no structuredContent`);
  return result;
}

/** Width and height from a PNG's IHDR chunk, after checking the signature. */
function pngSize(bytes) {
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  check(bytes.length > 24 && signature.every((b, i) => bytes[i] === b), "the resource is not a PNG");
  check(bytes.toString("latin1", 12, 16) === "IHDR", "the PNG has no IHDR chunk first");
  return [bytes.readUInt32BE(16), bytes.readUInt32BE(20)];
}

async function poolStatus(client) {
  const read = await client.readResource({ uri: "pool://status" });
  return JSON.parse(read.contents[0].text);
}

async function waitForIdlePool(client, withinMs) {
  const deadline = Date.now() + withinMs;
  for (;;) {
    const status = await poolStatus(client);
    if (status.devices.every((device) => !device.running && device.queue_depth === 0)) return status;
    check(Date.now() < deadline, `the device lane is still busy ${withinMs} ms later: ${JSON.stringify(status.devices)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function run(client) {
  // 1. Tools, with output schemas (the SDK validates structuredContent against them on every call).
  const { tools } = await client.listTools();
  check(JSON.stringify(tools.map((t) => t.name).sort()) === JSON.stringify(TOOLS), `tools: ${tools.map((t) => t.name)}`);
  check(tools.every((t) => t.outputSchema), "a tool has no output schema");
  ok(`tools/list: ${tools.length} tools with output schemas`);

  // 2. Generate, then read the full-resolution image back as a resource.
  const made = await call(client, "generate_image", { prompt: "a red lighthouse", width: 64, height: 64, steps: 2, seed: 3 });
  const image = made.structuredContent.images[0];
  check(image.width === 64 && image.height === 64 && image.seed === 3, `generate_image: ${JSON.stringify(image)}`);
  check(made.content.some((b) => b.type === "image" && b.data.length > 0), "generate_image returned no preview");
  check(made.content.some((b) => b.type === "resource_link" && b.uri === image.uri), "no resource_link to the image");
  ok(`generate_image: ${image.uri} ${image.width}x${image.height}`);

  const read = await client.readResource({ uri: image.uri });
  check(read.contents.length === 1 && read.contents[0].mimeType === "image/png", "the image resource is not image/png");
  const [w, h] = pngSize(Buffer.from(read.contents[0].blob, "base64"));
  check(w === image.width && h === image.height, `the PNG is ${w}x${h}, the result said ${image.width}x${image.height}`);
  ok(`resources/read ${image.uri}: a ${w}x${h} PNG, as reported`);

  // 3. The other tools, on the ids of earlier results.
  const labels = ["a lighthouse", "a cat", "a bowl of soup"];
  const classified = (await call(client, "clip_classify", { image: image.uri, labels })).structuredContent;
  const total = classified.labels.reduce((sum, entry) => sum + entry.score, 0);
  check(labels.includes(classified.top_label) && Math.abs(total - 1) < 1e-3, `clip_classify: ${JSON.stringify(classified)}`);
  ok(`clip_classify: top label '${classified.top_label}'`);

  const described = (await call(client, "describe_image", { image: image.uri, max_tokens: 8 })).structuredContent;
  check(described.text.trim().length > 0 && described.tokens >= 1, `describe_image: ${JSON.stringify(described)}`);
  ok(`describe_image: ${described.tokens} tokens`);

  const controlled = (
    await call(client, "controlled_generate", {
      prompt: "a tower", control_image: image.uri, width: 64, height: 64, steps: 2, seed: 1,
    })
  ).structuredContent;
  const steered = controlled.images[0];
  check(steered.id !== image.id && steered.width === 64, `controlled_generate: ${JSON.stringify(steered)}`);
  ok(`controlled_generate: ${steered.uri} (control ${controlled.controls[0].type})`);

  const compared = (await call(client, "compare_images", { image_a: image.uri, image_b: steered.uri })).structuredContent;
  check(compared.ssim >= -1 && compared.ssim <= 1 && compared.diff_image.uri.startsWith("image://"), "compare_images");
  ok(`compare_images: ssim ${compared.ssim.toFixed(3)}, pixel difference ${compared.pixel_difference.toFixed(3)}`);

  const models = (await call(client, "list_models", {})).structuredContent;
  check(models.profile === "tiny" && models.models.some((m) => m.name === "tiny-sd15"), "list_models");
  ok(`list_models: ${models.models.length} models, profile ${models.profile}`);

  // 4. Progress: a generation with several steps reports them to the client's progress callback.
  const updates = [];
  await call(
    client,
    "generate_image",
    { prompt: "progress", width: 64, height: 64, steps: 8, seed: 2 },
    { onprogress: (update) => updates.push(update) },
  );
  check(updates.length >= 1, "no progress notification arrived for an 8-step generation");
  check(updates.some((u) => u.total === 8 && /step \d+\/8/.test(u.message ?? "")), `progress: ${JSON.stringify(updates)}`);
  ok(`progress: ${updates.length} notifications (${updates.map((u) => u.message).join(", ")})`);

  // 5. Cancellation: abort a running generation. The SDK rejects the call and sends
  //    notifications/cancelled; the server stops at its next step and frees the device lane.
  const controller = new AbortController();
  let firstStep;
  const started = new Promise((resolve) => (firstStep = resolve));
  const long = client.callTool(
    { name: "generate_image", arguments: { prompt: "cancel me", width: 512, height: 512, steps: 100, seed: 4 } },
    undefined,
    { signal: controller.signal, timeout: CALL_TIMEOUT_MS, onprogress: (u) => u.total === 100 && firstStep() },
  );
  const outcome = long.then(() => "resolved", () => "rejected");
  await Promise.race([started, outcome]);
  const busy = await poolStatus(client);
  check(busy.devices.some((device) => device.running), "the generation to cancel is not running on a device");
  const abortedAt = Date.now();
  controller.abort("the check cancels it");
  check((await outcome) === "rejected", "the aborted call resolved instead of rejecting");
  const rejectedMs = Date.now() - abortedAt;
  check(rejectedMs < 1000, `the aborted call took ${rejectedMs} ms to reject`);
  await waitForIdlePool(client, 15_000);
  const freedMs = Date.now() - abortedAt;
  const after = await call(client, "generate_image", { prompt: "after", width: 64, height: 64, steps: 2, seed: 6 });
  check(after.structuredContent.images[0].width === 64, "the call after the cancellation failed");
  ok(`cancellation: rejected in ${rejectedMs} ms, lane free after ${freedMs} ms, the next call answered`);

  // 6. Jobs: a call longer than the server's wait returns a handle; get_job reports its progress and
  //    cancel_job stops it.
  const handled = await client.callTool(
    { name: "generate_image", arguments: { prompt: "a job", width: 512, height: 512, steps: 100, seed: 8 } },
    undefined,
    { timeout: CALL_TIMEOUT_MS },
  );
  const job = handled.structuredContent?.job;
  check(job && job.status === "running", `expected a job handle (is job_wait_seconds short?): ${textOf(handled)}`);
  const polled = (await call(client, "get_job", { job_id: job.id, wait_seconds: 0 })).structuredContent;
  check(polled.job.status === "running" && polled.job.progress > 0, `get_job: ${JSON.stringify(polled.job)}`);
  const cancelled = (await call(client, "cancel_job", { job_id: job.id })).structuredContent;
  check(cancelled.job.status === "cancelled", `cancel_job: ${JSON.stringify(cancelled.job)}`);
  await waitForIdlePool(client, 15_000);
  ok(`jobs: ${job.id} ran (${polled.job.message}), then cancel_job cancelled it and freed the lane`);
}

const [transport, label] = transportFrom(process.argv.slice(2));
const client = new Client({ name: "multimodal-mcp-sdk-check", version: "1.0.0" });
const began = Date.now();
try {
  await client.connect(transport);
  ok(`connected over ${label} to ${client.getServerVersion()?.name} ${client.getServerVersion()?.version}`);
  await run(client);
  console.log(`all checks passed over ${label} in ${((Date.now() - began) / 1000).toFixed(1)} s`);
} catch (error) {
  const reason = error instanceof CheckFailed ? error.message : error?.stack ?? String(error);
  console.error(`FAILED over ${label}: ${reason}`);
  process.exitCode = 1;
} finally {
  await client.close().catch(() => {});
}
