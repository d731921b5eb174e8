// spike: a flash sale. 0 -> 200 VUs in one second on a campaign of 1,000 vouchers, held for a
// few seconds: every voucher goes exactly once, the rest are told SOLD_OUT.
import { Options } from 'k6/options';
import {
  Campaign,
  createCampaign,
  finalCheck,
  iteration,
  SUMMARY_TREND_STATS,
  summarize,
  thresholds,
} from './lib/gateway.ts';

const scale = Number(__ENV.SCALE || 1);

export const options: Options = {
  scenarios: {
    spike: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: '1s', target: 200 },
        { duration: `${10 * scale}s`, target: 200 },
      ],
      gracefulRampDown: '5s',
    },
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
  thresholds: thresholds(250),
};

export function setup(): Campaign {
  return createCampaign(1_000, 'k6 spike');
}

export default function (campaign: Campaign): void {
  iteration(campaign);
}

export function teardown(campaign: Campaign): void {
  finalCheck(campaign);
}

export function handleSummary(data: Parameters<typeof summarize>[1]) {
  return summarize('spike', data);
}
