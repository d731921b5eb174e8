// ceiling: k6's own limit on this machine for this workload. The stress suite's VU profile and
// request shapes (nine in ten a POST of a redeem-sized JSON body, one in ten a GET, each answer
// checked against a fixed string), sent to the gateway's cheapest answer: the fixed 404 problem
// for an unknown path, which touches neither Redis nor PostgreSQL. The stress suite's figures are
// read against this one, measured in the same session.
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import { Options } from 'k6/options';
import { BASE_URL, SUMMARY_TREND_STATS, summarize } from './lib/gateway.ts';
import { options as stress } from './stress.ts';

export const options: Options = {
  scenarios: stress.scenarios,
  summaryTrendStats: SUMMARY_TREND_STATS,
  thresholds: { http_req_failed: ['rate==0'], checks: ['rate==1'] },
};

http.setResponseCallback(http.expectedStatuses(404));

const PARAMS = { headers: { 'Content-Type': 'application/json' } };
let counter = 0;

export default function (): void {
  counter += 1;
  const res =
    Math.random() < 0.1
      ? http.get(`${BASE_URL}/nowhere/${counter}`)
      : http.post(
          `${BASE_URL}/nowhere/${counter}`,
          `{"userId":"ceiling-${exec.vu.idInTest}-${counter}","idempotencyKey":"k-${counter}"}`,
          PARAMS,
        );
  check(res, { 'fixed reply: 404': (r) => r.status === 404 && (r.body as string).length > 0 });
}

export function handleSummary(data: Parameters<typeof summarize>[1]) {
  return summarize('ceiling', data);
}
