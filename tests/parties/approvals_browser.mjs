// A person at the approvals page, in headless Chromium (Debian's, driven by playwright-core):
// opens the page, is sent to the OpenID provider, logs in there (and consents), comes back
// and looks at request ID. With --approve, also tries a forged form POST without the CSRF
// token, then approves through the page's own form with --comment. With --live instead of
// --id, it writes the --ready file once logged in and waits on the open list, without
// reloading it, for a request to appear: the page's live refresh must bring it. With --next,
// it starts at `/login?next=NEXT` (NEXT put in the URL as given, e.g. a hostile
// `/%09/evil.example/`) and reports the origin it lands on after logging in.
//
//   node approvals_browser.mjs --page URL --person NAME (--id ID | --live --ready FILE)
//        --screenshot FILE [--approve --comment TEXT] [--next NEXT]
//
// Prints one JSON object with what it saw; exits 1 (with a screenshot) on a step that fails.
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: a } = parseArgs({
  options: {
    page: { type: 'string' },
    person: { type: 'string' },
    id: { type: 'string' },
    screenshot: { type: 'string' },
    approve: { type: 'boolean', default: false },
    live: { type: 'boolean', default: false },
    ready: { type: 'string' },
    comment: { type: 'string', default: '' },
    next: { type: 'string' },
  },
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox'],
});
const page = await browser.newPage();
page.setDefaultTimeout(30000);
const seen = { person: a.person };
try {
  await page.goto(a.next === undefined ? `${a.page}/approvals` : `${a.page}/login?next=${a.next}`);
  // The provider's login form, then its consent form.
  await page.fill('input[name="login"]', a.person);
  await page.fill('input[name="password"]', 'any password');
  await page.click('button[type="submit"]');
  for (let i = 0; i < 3 && !page.url().startsWith(a.page); i++) {
    await page.click('button[type="submit"]');
    await page.waitForLoadState();
  }
  if (a.next !== undefined) {
    // Wherever the login sent the browser, once it has settled there.
    await page.waitForURL((u) => !u.href.startsWith(`${a.page}/callback`), { waitUntil: 'load' });
    seen.landed = page.url();
    seen.landed_origin = new URL(page.url()).origin;
  }
  await page.waitForURL(`${a.page}/approvals`);
  seen.header = (await page.textContent('header')).replace(/\s+/g, ' ').trim();
  if (a.live) {
    writeFileSync(a.ready, 'logged in\n');
    const review = page.getByRole('link', { name: 'Review' }).first();
    await review.waitFor({ timeout: 30000 });
    a.id = (await review.getAttribute('href')).replace('/approvals/', '');
    seen.id = a.id;
    seen.live = true;
  }
  const link = page.locator(`a[href="/approvals/${a.id}"]`);
  seen.listed = (await link.count()) > 0;
  if (!a.approve) {
    const detail = await page.goto(`${a.page}/approvals/${a.id}`);
    seen.detail_status = detail.status();
    await page.screenshot({ path: a.screenshot, fullPage: true });
  } else {
    // A log-out another page could send: the browser's cookie, but not the page's token. It
    // is refused and the session stays (the steps below need it).
    const logout = await page.request.post(`${a.page}/logout`, { form: {}, maxRedirects: 0 });
    seen.forged_logout_status = logout.status();
    // A form another page could send: the browser's cookie, but not the page's token.
    const forged = await page.request.post(`${a.page}/approvals/${a.id}`, {
      form: { verdict: 'approve' },
      maxRedirects: 0,
    });
    seen.forged_status = forged.status();
    await link.click();
    await page.waitForURL(`${a.page}/approvals/${a.id}`);
    seen.args = await page.textContent('#args');
    await page.fill('textarea[name="comment"]', a.comment);
    await page.screenshot({ path: a.screenshot.replace(/\.png$/, '-before.png'), fullPage: true });
    await page.click('button[value="approve"]');
    await page.waitForURL(/done=approved/);
    seen.flash = await page.textContent('p.note');
    seen.state = await page.textContent('span.state');
    await page.screenshot({ path: a.screenshot, fullPage: true });
  }
  console.log(JSON.stringify(seen));
} catch (e) {
  seen.error = String(e);
  seen.url = page.url();
  seen.body = (await page.content().catch(() => '')).slice(0, 4000);
  await page.screenshot({ path: a.screenshot, fullPage: true }).catch(() => {});
  console.log(JSON.stringify(seen));
  process.exitCode = 1;
} finally {
  await browser.close();
}
