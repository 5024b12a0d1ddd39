// Debian's Chromium, driven by playwright-core, for the review page's tests and benchmark.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';

/** The `skip` of a browser test: a reason where HEMATO_SKIP_BROWSER=1, else false. */
export const SKIP_BROWSER = process.env.HEMATO_SKIP_BROWSER === '1' && 'HEMATO_SKIP_BROWSER=1';

/** Starts Chromium (HEMATO_CHROMIUM, else Debian's), or fails saying how to install it. */
export async function launchChromium(): Promise<Browser> {
  const executablePath = process.env.HEMATO_CHROMIUM ?? '/usr/bin/chromium';
  assert.ok(
    existsSync(executablePath),
    `${executablePath} is missing: run \`bash scripts/setup.sh --test\` to install Chromium for the browser test (or set HEMATO_SKIP_BROWSER=1 to skip it)`,
  );
  return chromium.launch({ executablePath, args: ['--no-sandbox'] });
}

/** Opens the review page at `url` in a new tab and waits until it has the model's classes. */
export async function openReviewPage(browser: Browser | BrowserContext, url: string): Promise<Page> {
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForFunction(() => document.querySelectorAll('#differential tbody tr').length > 0);
  return page;
}
