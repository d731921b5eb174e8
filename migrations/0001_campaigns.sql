-- The system of record. Redis decides redeems; these constraints make an over-redemption or a
-- second voucher per user impossible here even if Redis were wrong.

create table campaigns (
    id         uuid        primary key,
    name       text        not null,
    total      integer     not null constraint campaigns_total_positive check (total > 0),
    -- counted by the writer from rows it really inserted, never from what Redis said
    redeemed   integer     not null default 0
               constraint campaigns_redeemed_within_total check (redeemed between 0 and total),
    created_at timestamptz not null default now()
);

create table redemptions (
    campaign_id     uuid        not null references campaigns (id),
    user_id         text        not null,
    idempotency_key text        not null,
    -- the voucher number: Redis hands out 1..total in order
    seq             integer     not null constraint redemptions_seq_positive check (seq >= 1),
    redeemed_at     timestamptz not null,
    -- one voucher per user
    constraint redemptions_pkey primary key (campaign_id, user_id),
    -- one holder per voucher number
    constraint redemptions_seq_unique unique (campaign_id, seq)
);

-- Outbox entries PostgreSQL refused. Only possible after Redis lost or rolled back state: these
-- users were told REDEEMED and hold nothing. Empty in normal operation.
create table rejected_redemptions (
    campaign_id     uuid        not null,
    user_id         text        not null,
    idempotency_key text        not null,
    seq             integer     not null,
    redeemed_at     timestamptz not null,
    reason          text        not null constraint rejected_redemptions_reason check (
                        reason in ('user_holds_other_key', 'sold_out', 'seq_taken', 'unknown_campaign')),
    rejected_at     timestamptz not null default now(),
    -- a redelivered refused entry is recorded once
    primary key (campaign_id, user_id, idempotency_key)
);

-- Settings fixed when the database is first used, such as the number of outbox shards: every
-- gateway must agree on them, so they live with the data rather than in each gateway's flags.
create table gateway_settings (
    name  text primary key,
    value text not null
);
