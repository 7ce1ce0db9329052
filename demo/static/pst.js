'use strict';
// Shared by the demo pages. config.json, written by the server that serves
// the page, names the issuer and the relying party; they are different
// sites, as in production. Every failure is turned into a sentence saying
// what happened and what to do (explain), with a data-state a test can read.

const CONFIG = fetch('config.json', {cache: 'no-store'}).then(r => r.json());
const WK = '/.well-known/private-state-token/';

// issue asks the browser for a batch of tokens; it resolves to whether the
// browser now holds tokens of the issuer.
async function issue() {
  const c = await CONFIG;
  await fetch(c.issuer + WK + 'issuance', {privateToken: {version: 1, operation: 'token-request', issuer: c.issuer}});
  return document.hasPrivateToken(c.issuer);
}

// redeem spends one token at the issuer for a fresh redemption record.
async function redeem() {
  const c = await CONFIG;
  await fetch(c.issuer + WK + 'redemption', {privateToken: {version: 1, operation: 'token-redemption', issuer: c.issuer, refreshPolicy: 'refresh'}});
  return document.hasRedemptionRecord(c.issuer);
}

// sendRecord has the browser attach its record to a request to this site's
// own server, which verifies it (rp.Handler). It resolves to the answer.
async function sendRecord() {
  const c = await CONFIG;
  const r = await fetch('verify', {privateToken: {version: 1, operation: 'send-redemption-record', issuers: [c.issuer]}});
  return {ok: r.ok, status: r.status, body: await r.json()};
}

// chromiumLine is the command that starts Chromium trusting the issuer's
// current keys: the commitment wrapped in an object keyed by the issuer
// origin, exactly as `pstctl commitment --chromium` prints it.
async function chromiumLine(c) {
  const r = await fetch(c.issuer + WK + 'key-commitment', {cache: 'no-store'});
  if (!r.ok) throw new Error('the issuer publishes no commitment (' + r.status + ')');
  const value = '{' + JSON.stringify(c.issuer) + ':' + (await r.text()).trim() + '}';
  return "chromium --additional-private-state-token-key-commitments='" + value + "' " + c.issuer + '/demo/';
}

// explain says why op ('issue', 'redeem', 'send') failed with err. It asks
// the issuer's /readyz first: a stopped or unready issuer explains any
// failure. The rest is told apart by the browser's message and, for
// issuance, by the issuer page's /demo/diagnosis.
async function explain(op, err) {
  const c = await CONFIG;
  if (!('hasPrivateToken' in document)) {
    return {state: 'no-api', text: 'This browser has no Private State Token API. Use Chromium or Chrome 117 or later.'};
  }
  let ready;
  try {
    ready = await fetch(c.issuer + '/readyz', {cache: 'no-store'});
  } catch (e) {
    return {state: 'stopped', text: 'The issuer ' + c.issuer + ' does not answer: it is stopped or unreachable. ' +
      'Start it again (make run) and retry. The browser keeps the tokens it already holds.'};
  }
  if (ready.status === 503) {
    let detail = 'no reason given';
    try { detail = ((await ready.json()).detail || detail).replace(/^not ready: /, ''); } catch (e) { /* not a problem document */ }
    return {state: 'not-ready', text: 'The issuer is running but not ready: ' + detail + '. ' +
      'It refuses to issue or redeem until its database and HSM answer again, so nothing is half done; ' +
      'it recovers by itself. Retry in a moment.'};
  }
  const msg = String(err && err.message || err);
  if (/quota/i.test(msg)) {
    if (op === 'redeem') {
      return {state: 'browser-quota', text: 'Chromium refused to redeem another token on this site: it lets a site ' +
        'redeem one issuer\'s tokens only a few times in a period (two, in Chromium 156) — the browser\'s limit, ' +
        'not the issuer\'s. The record you already have is still good: send it instead.'};
    }
    return {state: 'browser-quota', text: 'Chromium refused to fetch more tokens: it keeps at most 500 tokens per issuer ' +
      'and lets a site use at most two issuers. Redeem some first, or use a fresh profile.'};
  }
  if (op !== 'issue' && (/exhausted/i.test(msg) || !(await document.hasPrivateToken(c.issuer)))) {
    return noTokens(c);
  }
  if (op === 'issue') {
    let d = {rate_limited_seconds: 0};
    try { d = await (await fetch('diagnosis', {cache: 'no-store'})).json(); } catch (e) { /* not the issuer's page */ }
    if (d.rate_limited_seconds > 0) {
      return {state: 'rate-limited', text: 'The issuer refused: it gives each address at most ' + c.rate_limit +
        ' issuance request(s) every ' + c.rate_window + ' (PSTD_RATE_LIMIT), and yours has had them. ' +
        'Try again in ' + d.rate_limited_seconds + ' s.'};
    }
    let line;
    try { line = await chromiumLine(c); } catch (e) { line = 'pstctl commitment --chromium'; }
    return {state: 'commitment', command: line, text: 'The issuer is ready and answered, but the browser rejected its ' +
      'tokens: the key commitment Chromium was started with does not match the issuer\'s current keys ' +
      '(they changed — a key rotation or a new database — or Chromium was started for another issuer). ' +
      'Quit Chromium and start it again with this line:'};
  }
  return {state: 'refused', text: 'The issuer answered without a redemption record (' + msg + '); ' +
    'the browser has spent the token. The issuer\'s log, under the request id, says why.'};
}

function noTokens(c) {
  return {state: 'no-tokens', text: 'No tokens left: this browser holds no tokens of ' + c.issuer +
    '. Get a batch on the issuer\'s page first' + (c.issuer ? ' (' + c.issuer + '/demo/)' : '') + ', then come back.'};
}

// show renders an outcome {state, text, command?} into the result box.
function show(id, o) {
  const el = document.getElementById(id);
  el.dataset.state = o.state;
  el.className = 'result ' + (o.ok ? 'ok' : 'problem');
  el.textContent = o.text;
  if (o.command) {
    const pre = document.createElement('pre');
    pre.id = 'fix';
    pre.textContent = o.command;
    el.append(pre);
  }
}

function working(id) {
  const el = document.getElementById(id);
  el.dataset.state = 'working';
  el.className = 'result';
  el.textContent = 'Working…';
}
