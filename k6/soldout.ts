// soldout: 100 VUs on a campaign of 500 vouchers: most answers are SOLD_OUT, and the campaign
// must end with exactly 500 redeemed, each one a voucher k6 was told it got.
import { campaignSuite, suiteOptions } from './lib/gateway.ts';

const scale = Number(__ENV.SCALE || 1);

export const options = suiteOptions('soldout', { executor: 'constant-vus', vus: 100, duration: `${15 * scale}s` }, 150);

const suite = campaignSuite('soldout', 500);
export const setup = suite.setup;
export default suite.iterate;
export const teardown = suite.teardown;
export const handleSummary = suite.handleSummary;
