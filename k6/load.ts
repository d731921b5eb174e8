// load: ramp 50 -> 100 VUs on a campaign too large to sell out: the reference's load profile.
import { campaignSuite, suiteOptions } from './lib/gateway.ts';

const scale = Number(__ENV.SCALE || 1);

export const options = suiteOptions('load', {
  executor: 'ramping-vus',
  startVUs: 50,
  stages: [
    { duration: `${10 * scale}s`, target: 100 },
    { duration: `${20 * scale}s`, target: 100 },
  ],
  gracefulRampDown: '5s',
}, 150);

const suite = campaignSuite('load', 1_000_000_000);
export const setup = suite.setup;
export default suite.iterate;
export const teardown = suite.teardown;
export const handleSummary = suite.handleSummary;
