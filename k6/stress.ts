// stress: ramp 100 -> 200 VUs, then hold 200 VUs, on a campaign too large to sell out.
// The mission's scenario: how the gateway holds up at and beyond the reference's stress load.
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
    stress: {
      executor: 'ramping-vus',
      startVUs: 100,
      stages: [
        { duration: `${10 * scale}s`, target: 200 },
        { duration: `${20 * scale}s`, target: 200 },
      ],
      gracefulRampDown: '5s',
    },
  },
  summaryTrendStats: SUMMARY_TREND_STATS,
  thresholds: thresholds(250),
};

export function setup(): Campaign {
  return createCampaign(1_000_000_000, 'k6 stress');
}

export default function (campaign: Campaign): void {
  iteration(campaign);
}

export function teardown(campaign: Campaign): void {
  finalCheck(campaign);
}

export function handleSummary(data: Parameters<typeof summarize>[1]) {
  return summarize('stress', data);
}
