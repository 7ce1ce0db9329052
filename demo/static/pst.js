// Shared helpers of the demo pages. ISSUER is this page's origin: pstd serves
// the demo on its own origin.
const ISSUER = location.origin;
const WK = ISSUER + '/.well-known/private-state-token/';

async function issue() {
  const r = await fetch(WK + 'issuance', {privateToken: {version: 1, operation: 'token-request', issuer: ISSUER}});
  return {status: r.status, has: await document.hasPrivateToken(ISSUER)};
}

async function redeem(refreshPolicy) {
  const r = await fetch(WK + 'redemption', {privateToken: {version: 1, operation: 'token-redemption', issuer: ISSUER, refreshPolicy}});
  return {status: r.status, record: await document.hasRedemptionRecord(ISSUER)};
}

async function sendRecord(url) {
  const r = await fetch(url, {privateToken: {version: 1, operation: 'send-redemption-record', issuers: [ISSUER]}});
  return r.json();
}

async function show(id, p) {
  const el = document.getElementById(id);
  el.textContent = 'Working…';
  try {
    const v = await p;
    if ('has' in v) el.textContent = v.has ? 'Done: the browser now holds tokens from this issuer.' : 'The issuer answered, but the browser holds no tokens.';
    else el.textContent = v.record ? 'Done: the browser holds a redemption record from this issuer.' : 'No redemption record.';
  } catch (e) {
    el.textContent = 'The browser refused: ' + e.name + (e.message ? ' — ' + e.message : '');
  }
}

async function refreshState(id) {
  try {
    if (await document.hasPrivateToken(ISSUER)) document.getElementById(id).textContent = 'The browser already holds tokens from this issuer.';
  } catch (e) { /* the API is missing: say so on first use */ }
}
