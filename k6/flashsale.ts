// flashsale: a campaign that opens OPEN_IN seconds (default 5) after the run starts. 200 VUs poll
// before the opening, each honouring the 409's Retry-After, so the crowd redeems in the opening
// second; each VU then keeps coming as new users until the vouchers are gone. Checked: every
// early answer is a 409 with Retry-After, no voucher is given before the opening, the campaign's
// invariants are exact, and the winners' list (GET /campaigns/{id}/redemptions as CSV) holds
// exactly the users k6 was told REDEEMED.
import http from 'k6/http';
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { Counter, Gauge } from 'k6/metrics';
import {
  BASE_URL,
  Campaign,
  Data,
  JSON_TYPE,
  bearer,
  finalCheck,
  suiteOptions,
  summarize,
  value,
  vouchersSeen,
} from './lib/gateway.ts';

// A 409 before the opening is the expected answer, not a failed request.
http.setResponseCallback(http.expectedStatuses(200, 201, 409));

const TOTAL = Number(__ENV.TOTAL || 2000);
const OPEN_IN_S = Number(__ENV.OPEN_IN || 5);
const VUS = Number(__ENV.VUS || 200);

export const options = suiteOptions('flashsale', {
  executor: 'per-vu-iterations',
  vus: VUS,
  // Twice as many users as vouchers: the last ones find it sold out.
  iterations: Math.ceil((2 * TOTAL) / VUS),
  maxDuration: `${OPEN_IN_S + 60}s`,
}, 1000);

/** Early answers: each a 409 `campaign_not_started`. */
const early = new Counter('early_409');
/** The sum of a hash of every user told REDEEMED, and the same over the winners' list. */
const seenHash = new Counter('winners_seen_hash');
const listHash = new Gauge('winners_list_hash');
const listCount = new Gauge('winners_list_count');
/** REDEEMED answers that came before the opening, by k6's clock (the same machine's). */
const beforeOpening = new Counter('redeemed_before_opening');

interface Sale extends Campaign {
  opensAt: number;
}

/** FNV-1a over the user id's UTF-16 units: 32 bits, so sums stay exact in a float. */
function hash(user: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < user.length; i++) {
    h = Math.imul(h ^ user.charCodeAt(i), 0x01000193);
  }
  return h >>> 0;
}

export function setup(): Sale {
  const opensAt = Date.now() + OPEN_IN_S * 1000;
  const body = JSON.stringify({
    name: 'k6 flashsale',
    total: TOTAL,
    startsAt: new Date(opensAt).toISOString(),
  });
  const res = http.post(`${BASE_URL}/campaigns`, body, {
    headers: { ...JSON_TYPE, ...bearer(__ENV.VG_ADMIN_TOKEN) },
  });
  if (res.status !== 201) {
    exec.test.abort(`cannot create the campaign: ${res.status} ${res.body}`);
  }
  const run = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e9).toString(36)}`;
  return { id: (res.json() as { id: string }).id, total: TOTAL, redeemedBefore: 0, run, opensAt };
}

const PARAMS = {
  headers: { ...JSON_TYPE, ...bearer(__ENV.VG_API_TOKEN) },
  tags: { name: 'redeem' },
};

/** One new user, until decided. */
export default function (sale: Sale): void {
  const user = `${sale.run}-${exec.vu.idInTest}-${exec.vu.iterationInScenario}`;
  const body = `{"userId":"${user}","idempotencyKey":"k-${user}"}`;
  for (;;) {
    const res = http.post(`${BASE_URL}/campaigns/${sale.id}/redeem`, body, PARAMS);
    if (res.status === 409) {
      early.add(1);
      const wait = Number(res.headers['Retry-After']);
      check(res, {
        'early: 409 campaign_not_started with Retry-After >= 1': () =>
          wait >= 1 && (res.json() as { code: string }).code === 'campaign_not_started',
      });
      // Honoured, to the opening: the whole crowd arrives in its first second.
      sleep(Math.max(0, Math.min(wait, (sale.opensAt - Date.now()) / 1000)));
      continue;
    }
    if (res.status === 503) {
      sleep(Number(res.headers['Retry-After'] || 1) / 10);
      continue;
    }
    const redeemed = res.body === '{"status":"REDEEMED"}';
    check(res, {
      'open: 200 REDEEMED or SOLD_OUT': () =>
        res.status === 200 && (redeemed || res.body === '{"status":"SOLD_OUT"}'),
    });
    if (redeemed) {
      vouchersSeen.add(1);
      seenHash.add(hash(user));
      if (Date.now() < sale.opensAt) {
        beforeOpening.add(1);
      }
    }
    return;
  }
}

/** The winners' list, once PostgreSQL holds every redemption: its size and hash. */
export function teardown(sale: Sale): void {
  finalCheck(sale);
  const deadline = Date.now() + 30_000;
  for (;;) {
    const res = http.get(`${BASE_URL}/campaigns/${sale.id}/redemptions`, {
      headers: { Accept: 'text/csv', ...bearer(__ENV.VG_ADMIN_TOKEN) },
      tags: { name: 'winners' },
      responseType: 'text',
    });
    const rows = String(res.body).trim().split('\r\n').slice(1);
    if (rows.length >= sale.total || Date.now() > deadline) {
      // The users k6 made hold no comma or quote: each row's first field is the user id as is.
      listCount.add(rows.length);
      listHash.add(rows.reduce((sum, row) => sum + hash(row.split(',')[0]), 0));
      return;
    }
    sleep(0.2);
  }
}

export function handleSummary(data: Data) {
  const summary = summarize('flashsale', data);
  const seen = value(data, 'vouchers_seen', 'count');
  const winners = {
    early409: value(data, 'early_409', 'count'),
    listed: value(data, 'winners_list_count', 'value'),
    redeemedBeforeOpening: value(data, 'redeemed_before_opening', 'count'),
    sameUsers:
      value(data, 'winners_list_hash', 'value') === value(data, 'winners_seen_hash', 'count'),
  };
  const ok = winners.listed === seen && winners.sameUsers && winners.redeemedBeforeOpening === 0;
  const file = Object.keys(summary).find((name) => name.endsWith('.json')) as string;
  const result = JSON.parse(summary[file] as string);
  result.winners = { ...winners, ok };
  result.invariants.ok = result.invariants.ok && ok;
  return {
    stdout:
      summary.stdout +
      `  winners' list ${ok ? 'OK' : 'WRONG'}: ${winners.listed} listed, ${seen} REDEEMED seen, ` +
      `same users ${winners.sameUsers}; ${winners.early409} early 409s, ` +
      `${winners.redeemedBeforeOpening} REDEEMED before the opening\n`,
    [file]: JSON.stringify(result, null, 2),
  };
}
