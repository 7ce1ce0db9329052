// Verifying pstd redemption records in Node with standard libraries:
// structured-headers (RFC 8941) and jose (JWS, JWKS). The steps are those of
// docs/RELYING-PARTIES.md; package rp does the same in Go.
//
//   npm install
//   node verify.mjs ISSUER_ORIGIN OUR_ORIGIN 'SEC_REDEMPTION_RECORD_VALUE'
//
// prints the verified claims of ISSUER_ORIGIN's record as JSON, or exits 1.
import {parseList} from 'structured-headers';
import {createRemoteJWKSet, jwtVerify} from 'jose';

const MAX_HEADER_BYTES = 16 << 10; // rp.MaxHeaderBytes
const MAX_ENTRIES = 8;             // rp.MaxHeaderEntries
const MAX_RECORD_BYTES = 8 << 10;  // rp.MaxRecordBytes

// Step 1: parse the header as an RFC 8941 List of sf-strings (issuer
// origins) each with an sf-string "redemption-record" parameter.
export function parseRedemptionRecordHeader(value) {
  if (value.length > MAX_HEADER_BYTES) throw new Error('Sec-Redemption-Record too large');
  const list = parseList(value); // throws on anything that is not a List
  if (list.length > MAX_ENTRIES) throw new Error('too many entries');
  return list.map(([item, params]) => {
    const record = params.get('redemption-record');
    if (typeof item !== 'string' || typeof record !== 'string') {
      throw new Error('each entry must be "origin";redemption-record="…" (sf-strings)');
    }
    return {issuer: item, record};
  });
}

// Step 2: one JWKS resolver per trusted issuer, created once per process so
// its cache is shared: keys are cached (cacheMaxAge) and an unknown kid
// triggers a refetch no more than once per cooldownDuration, so an issuer's
// key rotation needs nothing from us.
const resolvers = new Map();
function jwksOf(issuer) {
  if (!resolvers.has(issuer)) {
    resolvers.set(issuer, createRemoteJWKSet(new URL('/.well-known/private-state-token/jwks.json', issuer), {
      cacheMaxAge: 60 * 60 * 1000, cooldownDuration: 30 * 1000, timeoutDuration: 5000,
    }));
  }
  return resolvers.get(issuer);
}

// Steps 3–5: pick the trusted issuer's entry, verify the JWS (ES256 only,
// typ pst-rr+jwt, key by kid), then iss, aud, exp/iat and the claims pstd
// always sets.
export async function verifyRecord(headerValue, {issuer, audience}) {
  const entry = parseRedemptionRecordHeader(headerValue).find(e => e.issuer === issuer);
  if (!entry) throw new Error('no record of ' + issuer);
  if (entry.record.length > MAX_RECORD_BYTES) throw new Error('record too large');
  const {payload} = await jwtVerify(entry.record, jwksOf(issuer), {
    algorithms: ['ES256'],
    typ: 'pst-rr+jwt',
    issuer,
    audience,
    clockTolerance: 60,
    requiredClaims: ['iss', 'aud', 'exp', 'iat', 'jti', 'pst_key_id', 'pst_redemption_time'],
  });
  if (typeof payload.aud !== 'string') throw new Error('aud must be one origin');
  return payload;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [issuer, audience, header] = process.argv.slice(2);
  try {
    console.log(JSON.stringify(await verifyRecord(header, {issuer, audience})));
  } catch (e) {
    console.error('record does not verify: ' + (e.code || '') + ' ' + e.message);
    process.exit(1);
  }
}
