// stress: ramp 100 -> 200 VUs, then hold 200 VUs, on a campaign too large to sell out.
// The mission's scenario: how the gateway holds up at and beyond the reference's stress load.
import { campaignSuite, suiteOptions } from './lib/gateway.ts';

const scale = Number(__ENV.SCALE || 1);

export const options = suiteOptions('stress', {
  executor: 'ramping-vus',
  startVUs: 100,
  stages: [
    { duration: `${10 * scale}s`, target: 200 },
    { duration: `${20 * scale}s`, target: 200 },
  ],
  gracefulRampDown: '5s',
}, 250);

const suite = campaignSuite('stress', 1_000_000_000);
export const setup = suite.setup;
export default suite.iterate;
export const teardown = suite.teardown;
export const handleSummary = suite.handleSummary;
