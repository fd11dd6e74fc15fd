// Opens an rlkit report in headless Chromium (no download at run time: the browser ships inside the
// @sparticuz/chromium npm package), checks what a reader needs is there and rendered, and saves a screenshot.
//
//   cd tools/report_check && npm install && node check.mjs RUN_DIR/report.html report.png
//
// Exits 1 naming each problem: a section missing, an image that did not load, a script or console error.
import chromium from "@sparticuz/chromium";
import puppeteer from "puppeteer-core";
import { pathToFileURL } from "node:url";
import { resolve } from "node:path";

const [, , report, out = "report.png", height = "1800"] = process.argv;
if (!report) {
  console.error("usage: node check.mjs REPORT.html [OUT.png] [HEIGHT_PX]");
  process.exit(2);
}
const SECTIONS = ["Samples side by side", "Plots", "Evaluations", "Alarms", "Load the weights", "Resolved recipe"];
const browser = await puppeteer.launch({
  args: chromium.args, executablePath: await chromium.executablePath(), headless: true,
});
const problems = [];
try {
  const page = await browser.newPage();
  page.on("pageerror", (err) => problems.push(`script error: ${err.message}`));
  page.on("console", (msg) => msg.type() === "error" && problems.push(`console error: ${msg.text()}`));
  await page.setViewport({ width: 1280, height: Number(height) });
  await page.goto(pathToFileURL(resolve(report)).href, { waitUntil: "load" });
  const seen = await page.evaluate(() => ({
    headings: [...document.querySelectorAll("h1, h2")].map((h) => h.textContent),
    images: [...document.images].map((i) => ({ src: i.getAttribute("src").slice(0, 60), w: i.naturalWidth })),
    scored: document.querySelectorAll("div.scores").length,
    height: document.body.scrollHeight,
  }));
  for (const name of SECTIONS) {
    if (!seen.headings.some((h) => h.startsWith(name))) problems.push(`no "${name}" section`);
  }
  if (seen.scored === 0) problems.push("no scored samples beside their prompts");
  const broken = seen.images.filter((i) => i.w === 0);
  for (const img of broken) problems.push(`image did not load: ${img.src}`);
  await page.screenshot({ path: out, clip: { x: 0, y: 0, width: 1280, height: Math.min(Number(height), seen.height) } });
  console.log(`${seen.images.length} images rendered, ${broken.length} broken, ${seen.scored} scored samples; ` +
              `page ${seen.height} px; ` +
              `sections: ${seen.headings.slice(1).join(" | ")}; screenshot: ${out}`);
} finally {
  await browser.close();
}
if (problems.length) {
  for (const p of problems) console.error(`problem: ${p}`);
  process.exit(1);
}
