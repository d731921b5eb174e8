-- A campaign's sale window: redeems are taken from starts_at on, until ends_at; null is open.
-- A campaign closed before its start has an empty window (starts_at = ends_at).
alter table campaigns
    add column starts_at timestamptz,
    add column ends_at   timestamptz,
    add constraint campaigns_window_in_order check (ends_at >= starts_at);
