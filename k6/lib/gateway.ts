// What every suite shares: the campaign it runs on, the per-iteration mix of requests, the checks
// on each answer, the invariants checked at the end, and the summary files.
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import { Counter, Gauge } from 'k6/metrics';
import { Options, Scenario } from 'k6/options';

export const BASE_URL: string = __ENV.BASE_URL || 'http://127.0.0.1:8080';
export const JSON_TYPE = { 'Content-Type': 'application/json' };

/** The gateway's bearer tokens (VG_ADMIN_TOKEN, VG_API_TOKEN), sent when set. */
export function bearer(token: string | undefined): Record<string, string> {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** First REDEEMED answers: one per voucher k6 was given. */
export const vouchersSeen = new Counter('vouchers_seen');
/** The campaign's counters as the gateway reports them after the run. */
const finalTotal = new Gauge('final_total');
const finalRedeemed = new Gauge('final_redeemed');
const finalRemaining = new Gauge('final_remaining');
const redeemedBefore = new Gauge('redeemed_before');

export interface Campaign {
  id: string;
  total: number;
  /** Redeemed before this run (0 for a new campaign). */
  redeemedBefore: number;
  /** Unique per run, so user ids never collide with an earlier run's. */
  run: string;
}

/** The fractions of each iteration kind; fresh redeems take the rest. */
export interface Mix {
  replay: number;
  secondKey: number;
  summary: number;
}

export const DEFAULT_MIX: Mix = { replay: 0.1, secondKey: 0.1, summary: 0.1 };

/** Percentiles the summary reports (p99 is not among k6's defaults). */
export const SUMMARY_TREND_STATS = ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'];

/** Thresholds that fail the run: no failed request, every check passing, a p99 bound. */
export function thresholds(defaultP99Ms: number) {
  const p99 = Number(__ENV.P99_MS || defaultP99Ms);
  return {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
    http_req_duration: [`p(99)<${p99}`],
  };
}

/** The campaign to run on: a new one of `total` vouchers, or the one named by CAMPAIGN_ID (to
 * measure on a campaign that already holds many redemptions). */
export function createCampaign(total: number, name: string): Campaign {
  const run = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e9).toString(36)}`;
  const existing = __ENV.CAMPAIGN_ID;
  const res = existing
    ? http.get(`${BASE_URL}/campaigns/${existing}`)
    : http.post(`${BASE_URL}/campaigns`, JSON.stringify({ name, total }), {
        headers: { ...JSON_TYPE, ...bearer(__ENV.VG_ADMIN_TOKEN) },
      });
  if (res.status !== (existing ? 200 : 201)) {
    exec.test.abort(`cannot get the campaign: ${res.status} ${res.body}`);
  }
  const campaign = res.json() as { id: string; total: number; redeemed: number };
  return { id: campaign.id, total: campaign.total, redeemedBefore: campaign.redeemed, run };
}

interface Sent {
  user: string;
  key: string;
  body: string;
}

// The gateway's answers are fixed strings: compared as such, no JSON parsing per request (k6 shares
// this machine's two cores with the gateway, so every microsecond of script is load not applied).
const REDEEMED = '{"status":"REDEEMED"}';
const SOLD_OUT = '{"status":"SOLD_OUT"}';
const ALREADY_REDEEMED = '{"status":"ALREADY_REDEEMED"}';
const REDEEM_PARAMS = {
  headers: { ...JSON_TYPE, ...bearer(__ENV.VG_API_TOKEN) },
  tags: { name: 'redeem' },
};
const SUMMARY_PARAMS = { tags: { name: 'summary' } };

// Each VU's own memory: its latest requests (to replay) and users it holds vouchers for; 20,000
// of each across 200 VUs. Kept small because all of it is live heap that k6's garbage collector
// marks again and again: with 1,000 each, k6's pauses put a heavier tail on the latencies it
// measured for the gateway.
const REMEMBERED = 100;

/** The latest `REMEMBERED` items, the oldest overwritten in turn (`Array.shift` would move all
 * of them on every iteration, load on k6's share of the cores rather than on the gateway). */
class Recent<T> {
  private readonly items: T[] = [];
  private next = 0;

  add(item: T): void {
    this.items[this.next] = item;
    this.next = (this.next + 1) % REMEMBERED;
  }

  get size(): number {
    return this.items.length;
  }

  pick(): T {
    return this.items[Math.floor(Math.random() * this.items.length)];
  }
}

const sent = new Recent<Sent>();
const holders = new Recent<string>();
let counter = 0;
let prefix = '';

function redeem(campaign: Campaign, user: string, key: string) {
  return http.post(
    `${BASE_URL}/campaigns/${campaign.id}/redeem`,
    `{"userId":"${user}","idempotencyKey":"${key}"}`,
    REDEEM_PARAMS,
  );
}

/** One iteration: a fresh redeem, a replay, a second key of a holder, or a summary read. */
export function iteration(campaign: Campaign, mix: Mix = DEFAULT_MIX): void {
  const roll = Math.random();
  if (roll < mix.summary) {
    readSummary(campaign);
  } else if (roll < mix.summary + mix.replay && sent.size > 0) {
    replay(campaign);
  } else if (roll < mix.summary + mix.replay + mix.secondKey && holders.size > 0) {
    secondKey(campaign);
  } else {
    fresh(campaign);
  }
}

function fresh(campaign: Campaign): void {
  if (prefix === '') prefix = `${campaign.run}-${exec.vu.idInTest}-`;
  counter += 1;
  const user = prefix + counter;
  const key = `k-${counter}`;
  const res = redeem(campaign, user, key);
  const body = res.body as string;
  check(res, {
    'fresh redeem: 200 REDEEMED or SOLD_OUT, not a replay': (r) =>
      r.status === 200 &&
      (body === REDEEMED || body === SOLD_OUT) &&
      r.headers['Idempotent-Replayed'] === undefined,
  });
  if (body === REDEEMED) {
    vouchersSeen.add(1);
    holders.add(user);
  }
  sent.add({ user, key, body });
}

function replay(campaign: Campaign): void {
  const earlier = sent.pick();
  const res = redeem(campaign, earlier.user, earlier.key);
  check(res, {
    'replay: 200, the identical answer, marked as a replay when REDEEMED': (r) =>
      r.status === 200 &&
      r.body === earlier.body &&
      (earlier.body !== REDEEMED || r.headers['Idempotent-Replayed'] === 'true'),
  });
}

function secondKey(campaign: Campaign): void {
  counter += 1;
  const res = redeem(campaign, holders.pick(), `second-${counter}`);
  check(res, {
    'second key of a holder: 200 ALREADY_REDEEMED': (r) =>
      r.status === 200 && r.body === ALREADY_REDEEMED,
  });
}

interface Summary {
  total: number;
  redeemed: number;
  remaining: number;
}

function readSummary(campaign: Campaign): Summary | undefined {
  const res = http.get(`${BASE_URL}/campaigns/${campaign.id}`, SUMMARY_PARAMS);
  const summary = res.status === 200 ? (res.json() as unknown as Summary) : undefined;
  const ok = check(res, {
    'summary: 200, redeemed + remaining == total, remaining >= 0': () =>
      summary !== undefined &&
      summary.total === campaign.total &&
      summary.redeemed + summary.remaining === summary.total &&
      summary.remaining >= 0,
  });
  return ok ? summary : undefined;
}

/** After the run: the counters are consistent, and recorded for `handleSummary` to compare with
 * the vouchers k6 saw. */
export function finalCheck(campaign: Campaign): void {
  const summary = readSummary(campaign);
  if (summary) {
    finalTotal.add(summary.total);
    finalRedeemed.add(summary.redeemed);
    finalRemaining.add(summary.remaining);
    redeemedBefore.add(campaign.redeemedBefore);
  }
}

export type Data = {
  metrics: Record<string, { values: Record<string, number> }>;
  state: { testRunDurationMs: number };
};

export function value(data: Data, metric: string, field: string): number {
  return data.metrics[metric]?.values[field] ?? 0;
}

/** Writes `<name>.json` (in SUMMARY_DIR, default k6/results) and prints a short table. The
 * invariant that needs what k6 saw is checked here: the vouchers redeemed during the run == the
 * REDEEMED answers k6 got, and == the total when the campaign sold out. */
export function summarize(name: string, data: Data) {
  const total = value(data, 'final_total', 'value');
  const redeemed = value(data, 'final_redeemed', 'value');
  const remaining = value(data, 'final_remaining', 'value');
  const before = value(data, 'redeemed_before', 'value');
  const seen = value(data, 'vouchers_seen', 'count');
  const soldOut = total > 0 && remaining === 0;
  const invariants = {
    total,
    redeemed,
    remaining,
    redeemedBefore: before,
    seen,
    soldOut,
    ok:
      total > 0 &&
      redeemed + remaining === total &&
      remaining >= 0 &&
      redeemed - before === seen &&
      (!soldOut || redeemed === total),
  };
  const result = {
    suite: name,
    requests: value(data, 'http_reqs', 'count'),
    rps: value(data, 'http_reqs', 'rate'),
    p50_ms: value(data, 'http_req_duration', 'med'),
    p95_ms: value(data, 'http_req_duration', 'p(95)'),
    p99_ms: value(data, 'http_req_duration', 'p(99)'),
    failed_rate: value(data, 'http_req_failed', 'rate'),
    checks_rate: value(data, 'checks', 'rate'),
    duration_s: data.state.testRunDurationMs / 1000,
    invariants,
  };
  const f = (n: number) => n.toFixed(2);
  const table = [
    `${name}: ${result.requests} requests, ${result.rps.toFixed(0)} req/s`,
    `  latency p50 ${f(result.p50_ms)} ms  p95 ${f(result.p95_ms)} ms  p99 ${f(result.p99_ms)} ms`,
    `  failed ${(result.failed_rate * 100).toFixed(2)}%  checks ${(result.checks_rate * 100).toFixed(2)}%`,
    invariants.total > 0
      ? `  invariants ${invariants.ok ? 'OK' : 'VIOLATED'}: total ${total}, redeemed ${redeemed} ` +
        `(${before} before the run), remaining ${remaining}, vouchers k6 saw ${seen}` +
        (soldOut ? ' (sold out)' : '')
      : '  invariants: no campaign',
    '',
  ].join('\n');
  const dir = __ENV.SUMMARY_DIR || 'k6/results';
  return {
    stdout: table,
    [`${dir}/${name}.json`]: JSON.stringify(result, null, 2),
  };
}

/** A campaign suite's k6 options: its one scenario, the percentiles, the thresholds. */
export function suiteOptions(name: string, scenario: Scenario, defaultP99Ms: number): Options {
  return {
    scenarios: { [name]: scenario },
    summaryTrendStats: SUMMARY_TREND_STATS,
    thresholds: thresholds(defaultP99Ms),
  };
}

/** The lifecycle of a campaign suite: a campaign of `total` vouchers in setup, the mix in each
 * iteration, the final check in teardown, the summary files. */
export function campaignSuite(name: string, total: number) {
  return {
    setup: (): Campaign => createCampaign(total, `k6 ${name}`),
    iterate: (campaign: Campaign): void => iteration(campaign),
    teardown: (campaign: Campaign): void => finalCheck(campaign),
    handleSummary: (data: Data) => summarize(name, data),
  };
}
