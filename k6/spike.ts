// spike: a flash sale. 0 -> 200 VUs in one second on a campaign of 1,000 vouchers, held for a
// few seconds: every voucher goes exactly once, the rest are told SOLD_OUT.
import { campaignSuite, suiteOptions } from './lib/gateway.ts';

const scale = Number(__ENV.SCALE || 1);

export const options = suiteOptions('spike', {
  executor: 'ramping-vus',
  startVUs: 0,
  stages: [
    { duration: '1s', target: 200 },
    { duration: `${10 * scale}s`, target: 200 },
  ],
  gracefulRampDown: '5s',
}, 250);

const suite = campaignSuite('spike', 1_000);
export const setup = suite.setup;
export default suite.iterate;
export const teardown = suite.teardown;
export const handleSummary = suite.handleSummary;
