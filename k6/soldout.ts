// soldout: 100 VUs on a campaign of 500 vouchers: most answers are SOLD_OUT, and the campaign
// must end with exactly 500 redeemed, each one a voucher k6 was told it got.
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
    soldout: { executor: 'constant-vus', vus: 100, duration: `${15 * scale}s` },
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
  thresholds: thresholds(150),
};

export function setup(): Campaign {
  return createCampaign(500, 'k6 sold out');
}

export default function (campaign: Campaign): void {
  iteration(campaign);
}

export function teardown(campaign: Campaign): void {
  finalCheck(campaign);
}

export function handleSummary(data: Parameters<typeof summarize>[1]) {
  return summarize('soldout', data);
}
