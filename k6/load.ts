// load: ramp 50 -> 100 VUs on a campaign too large to sell out: the reference's load profile.
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
    load: {
      executor: 'ramping-vus',
      startVUs: 50,
      stages: [
        { duration: `${10 * scale}s`, target: 100 },
        { duration: `${20 * scale}s`, target: 100 },
      ],
      gracefulRampDown: '5s',
    },
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
  thresholds: thresholds(150),
};

export function setup(): Campaign {
  return createCampaign(1_000_000_000, 'k6 load');
}

export default function (campaign: Campaign): void {
  iteration(campaign);
}

export function teardown(campaign: Campaign): void {
  finalCheck(campaign);
}

export function handleSummary(data: Parameters<typeof summarize>[1]) {
  return summarize('load', data);
}
