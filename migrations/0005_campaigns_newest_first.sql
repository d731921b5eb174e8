-- `GET /campaigns` pages through campaigns newest first, by keyset (created_at, id).
create index campaigns_newest_first on campaigns (created_at desc, id desc);
