-- Voucher numbers Redis gave (the client was told REDEEMED) that never reached PostgreSQL: lost
-- with a Redis that came back without its data. Reconcile finds them as gaps in the numbering and,
-- with --repair, records them here so that they are reported once as new, then as known.
create table lost_redemptions (
    campaign_id uuid        not null references campaigns (id),
    seq         integer     not null,
    recorded_at timestamptz not null default now(),
    primary key (campaign_id, seq)
);
