//! Persisting a batch of outbox entries in one transaction. Every path inserts first and then
//! locks the touched campaign rows in id order to confirm their room, so two writers can never
//! wait for each other's locks the other way round (no deadlock), and inserts of different
//! writers overlap. The common batch (all new, room left) goes in with one plain insert; any
//! other is classified entry by entry (insert, already stored, refused) before it is written.
//! Rows are inserted only for campaigns the room read found, and campaigns are never deleted, so
//! no insert can outlive its campaign (the foreign key is gone: migration 0003).

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::domain::{CampaignId, Fate, Holder, OutboxEntry, RejectReason};

/// What a committed batch did; the rest of its entries were stored already (redeliveries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchSummary {
    pub inserted: u64,
    /// The entries refused, by their index in the batch, with why.
    pub rejected: Vec<(usize, RejectReason)>,
}

/// The fate of one entry, decided against the campaigns' room and the stored holders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Insert,
    AlreadyStored,
    Reject(RejectReason),
}

/// Stores one batch in one transaction. Idempotent: a redelivered batch changes nothing.
pub async fn store_batch(
    pool: &PgPool,
    entries: &[OutboxEntry],
) -> Result<BatchSummary, sqlx::Error> {
    if let Some(summary) = store_all_new(pool, entries).await? {
        return Ok(summary);
    }
    // Decided again when another writer committed meanwhile: it changed a campaign's room
    // between the read and the lock (room only shrinks as vouchers are stored), or stored a row
    // an entry meant to insert ran into while a later entry was refused for want of room. The
    // next round reads what it committed, so this ends.
    loop {
        if let Some(summary) = store_classified(pool, entries).await? {
            return Ok(summary);
        }
    }
}

/// The common case: every entry is new and every campaign has room. Inserts the batch with a
/// plain insert (no speculative insertion, nothing returned), then locks the campaigns and
/// confirms their room under the lock. `None`, with nothing written, when any of that does not
/// hold.
async fn store_all_new(
    pool: &PgPool,
    entries: &[OutboxEntry],
) -> Result<Option<BatchSummary>, sqlx::Error> {
    let wanted = per_campaign(entries.iter());
    let campaigns: Vec<Uuid> = wanted.keys().copied().collect();
    let mut tx = pool.begin().await?;
    if !fits(&wanted, &room(&mut tx, &campaigns, Lock::None).await?) {
        return Ok(None);
    }
    let all: Vec<&OutboxEntry> = entries.iter().collect();
    match insert_all(&mut tx, &all).await {
        Ok(()) => {}
        Err(error) if is_unique_violation(&error) => return Ok(None),
        Err(error) => return Err(error),
    }
    if !fits(&wanted, &room(&mut tx, &campaigns, Lock::ForUpdate).await?) {
        return Ok(None);
    }
    add_redeemed(&mut tx, &all.iter().map(|e| uuid(e)).collect::<Vec<_>>()).await?;
    tx.commit().await?;
    Ok(Some(BatchSummary {
        inserted: entries.len() as u64,
        rejected: Vec::new(),
    }))
}

/// Every other case: each entry classified (insert, already stored, refused) against the
/// campaigns' room and what PostgreSQL holds, the new ones inserted, then the campaigns locked
/// and their room confirmed. `None`, with nothing written, when a verdict must be decided again.
async fn store_classified(
    pool: &PgPool,
    entries: &[OutboxEntry],
) -> Result<Option<BatchSummary>, sqlx::Error> {
    let wanted = per_campaign(entries.iter());
    let campaigns: Vec<Uuid> = wanted.keys().copied().collect();
    let mut tx = pool.begin().await?;
    let capacity = room(&mut tx, &campaigns, Lock::None).await?;
    // Redeliveries and refusals are rare: when every campaign has room for all its entries, skip
    // looking up what is stored and let the insert's conflicts point at the few that need it.
    let stored = if fits(&wanted, &capacity) {
        Stored::default()
    } else {
        select_stored(&mut tx, entries).await?
    };

    let mut verdicts = classify(entries, capacity.clone(), stored);
    let to_insert: Vec<&OutboxEntry> = entries
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| **v == Verdict::Insert)
        .map(|(e, _)| e)
        .collect();

    let inserted = insert_new(&mut tx, &to_insert).await?;
    // An entry that did not insert is a redelivery of a stored holder, a second key of a holder,
    // or a voucher number already held by someone else.
    let missed = if inserted.len() < to_insert.len() {
        reclassify_missed(&mut tx, entries, &mut verdicts, &inserted).await?
    } else {
        Vec::new()
    };
    let counted: Vec<Uuid> = inserted.into_iter().map(|(campaign, _)| campaign).collect();
    let sold_out = per_campaign(
        entries
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| **v == Verdict::Reject(RejectReason::SoldOut))
            .map(|(e, _)| e),
    );
    // A missed entry held room that a later entry of its campaign was refused for.
    if missed
        .iter()
        .any(|&i| sold_out.contains_key(&uuid(&entries[i])))
    {
        return Ok(None);
    }

    let locked = room(&mut tx, &campaigns, Lock::ForUpdate).await?;
    let grown = |campaign: &Uuid| locked.get(campaign) > capacity.get(campaign);
    if !fits(&per_uuid(&counted), &locked) || sold_out.keys().any(grown) {
        return Ok(None);
    }
    add_redeemed(&mut tx, &counted).await?;

    let rejected: Vec<(usize, RejectReason)> = verdicts
        .iter()
        .enumerate()
        .filter_map(|(i, v)| match v {
            Verdict::Reject(reason) => Some((i, *reason)),
            _ => None,
        })
        .collect();
    if !rejected.is_empty() {
        sqlx::query(
            "insert into rejected_redemptions
                 (campaign_id, user_id, idempotency_key, seq, redeemed_at, reason)
             select * from unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::timestamptz[], $6::text[])
             on conflict do nothing",
        )
        .bind(rejected.iter().map(|&(i, _)| uuid(&entries[i])).collect::<Vec<_>>())
        .bind(rejected.iter().map(|&(i, _)| entries[i].holder.user.as_str()).collect::<Vec<_>>())
        .bind(rejected.iter().map(|&(i, _)| entries[i].holder.key.as_str()).collect::<Vec<_>>())
        .bind(rejected.iter().map(|&(i, _)| entries[i].seq).collect::<Vec<_>>())
        .bind(rejected.iter().map(|&(i, _)| entries[i].at).collect::<Vec<_>>())
        .bind(rejected.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }

    tx.commit().await?;
    Ok(Some(BatchSummary {
        inserted: counted.len() as u64,
        rejected,
    }))
}

fn uuid(entry: &OutboxEntry) -> Uuid {
    entry.campaign.as_uuid()
}

/// How many of `entries` each campaign has, in campaign id order.
fn per_campaign<'a>(entries: impl Iterator<Item = &'a OutboxEntry>) -> BTreeMap<Uuid, i32> {
    per_uuid(&entries.map(uuid).collect::<Vec<_>>())
}

/// How many times each campaign occurs in `campaigns`, in campaign id order.
fn per_uuid(campaigns: &[Uuid]) -> BTreeMap<Uuid, i32> {
    let mut counts = BTreeMap::new();
    for campaign in campaigns {
        *counts.entry(*campaign).or_default() += 1;
    }
    counts
}

/// Whether every campaign has room for all its entries (an unknown campaign has none).
fn fits(wanted: &BTreeMap<Uuid, i32>, room: &HashMap<Uuid, i32>) -> bool {
    wanted
        .iter()
        .all(|(campaign, n)| room.get(campaign).is_some_and(|left| left >= n))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    None,
    /// The rows stay locked until the transaction ends; taken in id order, so two writers can
    /// never deadlock.
    ForUpdate,
}

/// The vouchers each campaign has left.
async fn room(
    tx: &mut sqlx::PgConnection,
    campaigns: &[Uuid],
    lock: Lock,
) -> Result<HashMap<Uuid, i32>, sqlx::Error> {
    let sql = match lock {
        Lock::None => "select id, total - redeemed from campaigns where id = any($1)",
        Lock::ForUpdate => {
            "select id, total - redeemed from campaigns where id = any($1) order by id for update"
        }
    };
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(sql).bind(campaigns).fetch_all(tx).await?;
    Ok(rows.into_iter().collect())
}

/// Adds one to `campaigns.redeemed` per element of `campaigns` (one per row inserted).
async fn add_redeemed(tx: &mut sqlx::PgConnection, campaigns: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update campaigns c set redeemed = c.redeemed + n.count
         from (select id, count(*)::int as count from unnest($1::uuid[]) as t (id) group by id) n
         where c.id = n.id",
    )
    .bind(campaigns)
    .execute(tx)
    .await?;
    Ok(())
}

const INSERT: &str =
    "insert into redemptions (campaign_id, user_id, idempotency_key, seq, redeemed_at)
     select * from unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::timestamptz[])";

/// Inserts every entry in one statement; fails on any conflict with a stored row.
async fn insert_all(
    tx: &mut sqlx::PgConnection,
    entries: &[&OutboxEntry],
) -> Result<(), sqlx::Error> {
    bind_entries(sqlx::query(INSERT), entries)
        .execute(tx)
        .await
        .map(|_| ())
}

/// Inserts the entries that conflict with no stored row; returns the (campaign, user) of each.
async fn insert_new(
    tx: &mut sqlx::PgConnection,
    entries: &[&OutboxEntry],
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    let sql = format!("{INSERT} on conflict do nothing returning campaign_id, user_id");
    let rows = bind_entries(sqlx::query(&sql), entries)
        .fetch_all(tx)
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Binds the entries' columns, as arrays, to `$1..$5` of `INSERT`.
fn bind_entries<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    entries: &[&'q OutboxEntry],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(entries.iter().map(|e| uuid(e)).collect::<Vec<_>>())
        .bind(
            entries
                .iter()
                .map(|e| e.holder.user.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            entries
                .iter()
                .map(|e| e.holder.key.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(entries.iter().map(|e| e.seq).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.at).collect::<Vec<_>>())
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Decides again each entry meant for insertion that did not insert: a redelivery of a stored
/// holder, a second key of a holder, or a voucher number someone else holds. Returns their
/// indices.
async fn reclassify_missed(
    tx: &mut sqlx::PgConnection,
    entries: &[OutboxEntry],
    verdicts: &mut [Verdict],
    inserted: &[(Uuid, String)],
) -> Result<Vec<usize>, sqlx::Error> {
    let inserted: HashSet<(Uuid, &str)> = inserted.iter().map(|(c, u)| (*c, u.as_str())).collect();
    let missed = |(entry, verdict): &(&OutboxEntry, &mut Verdict)| {
        **verdict == Verdict::Insert
            && !inserted.contains(&(uuid(entry), entry.holder.user.as_str()))
    };
    let holders = select_holders(
        &mut *tx,
        entries
            .iter()
            .zip(verdicts.iter_mut())
            .filter(missed)
            .map(|(e, _)| e),
    )
    .await?;
    let mut indices = Vec::new();
    for (i, (entry, verdict)) in entries.iter().zip(verdicts.iter_mut()).enumerate() {
        if !missed(&(entry, &mut *verdict)) {
            continue;
        }
        *verdict = match holders.get(&holder_of(entry)) {
            Some(key) if key == entry.holder.key.as_str() => Verdict::AlreadyStored,
            Some(_) => Verdict::Reject(RejectReason::UserHoldsOtherKey),
            None => Verdict::Reject(RejectReason::SeqTaken),
        };
        indices.push(i);
    }
    Ok(indices)
}

/// The stored idempotency key of each (campaign, user) among `entries` that holds a voucher.
async fn select_holders<'a>(
    tx: &mut sqlx::PgConnection,
    entries: impl Iterator<Item = &'a OutboxEntry>,
) -> Result<HashMap<(Uuid, String), String>, sqlx::Error> {
    let (campaigns, users): (Vec<Uuid>, Vec<&str>) =
        entries.map(|e| (uuid(e), e.holder.user.as_str())).unzip();
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "select r.campaign_id, r.user_id, r.idempotency_key
         from redemptions r
         join unnest($1::uuid[], $2::text[]) as b (campaign_id, user_id)
           on r.campaign_id = b.campaign_id and r.user_id = b.user_id",
    )
    .bind(&campaigns)
    .bind(&users)
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(campaign, user, key)| ((campaign, user), key))
        .collect())
}

/// What PostgreSQL holds of the entries' users and of their voucher numbers, in one statement:
/// one snapshot, so that a voucher number and its holder are seen together.
async fn select_stored(
    tx: &mut sqlx::PgConnection,
    entries: &[OutboxEntry],
) -> Result<Stored, sqlx::Error> {
    let campaigns: Vec<Uuid> = entries.iter().map(uuid).collect();
    let users: Vec<&str> = entries.iter().map(|e| e.holder.user.as_str()).collect();
    let seqs: Vec<i32> = entries.iter().map(|e| e.seq).collect();
    let rows: Vec<(Uuid, String, String, i32)> = sqlx::query_as(
        "select r.campaign_id, r.user_id, r.idempotency_key, r.seq
         from redemptions r
         join unnest($1::uuid[], $2::text[], $3::int[]) as b (campaign_id, user_id, seq)
           on r.campaign_id = b.campaign_id and (r.user_id = b.user_id or r.seq = b.seq)",
    )
    .bind(&campaigns)
    .bind(&users)
    .bind(&seqs)
    .fetch_all(tx)
    .await?;
    let mut stored = Stored::default();
    for (campaign, user, key, seq) in rows {
        stored.seqs.insert((campaign, seq));
        stored.holders.insert((campaign, user), key);
    }
    Ok(stored)
}

/// What PostgreSQL holds of a batch: the idempotency key of each of its users who holds a
/// voucher, and which of its voucher numbers are given.
#[derive(Debug, Default)]
struct Stored {
    holders: HashMap<(Uuid, String), String>,
    seqs: HashSet<(Uuid, i32)>,
}

/// The (campaign, user) an entry's holder is stored under.
fn holder_of(entry: &OutboxEntry) -> (Uuid, String) {
    (uuid(entry), entry.holder.user.as_str().to_owned())
}

/// Decides each entry in stream order, against what is stored and the entries before it: a
/// holder's own key again is a no-op, another key is refused, a voucher number someone holds is
/// refused, and no campaign gets more new holders than its remaining capacity.
fn classify(
    entries: &[OutboxEntry],
    mut capacity: HashMap<Uuid, i32>,
    mut stored: Stored,
) -> Vec<Verdict> {
    entries
        .iter()
        .map(|entry| {
            let Some(left) = capacity.get_mut(&uuid(entry)) else {
                return Verdict::Reject(RejectReason::UnknownCampaign);
            };
            let holder = holder_of(entry);
            let seq = (uuid(entry), entry.seq);
            match stored.holders.get(&holder) {
                Some(key) if key == entry.holder.key.as_str() => Verdict::AlreadyStored,
                Some(_) => Verdict::Reject(RejectReason::UserHoldsOtherKey),
                // No room is the more final of the two: the user's answer is SOLD_OUT.
                None if *left <= 0 => Verdict::Reject(RejectReason::SoldOut),
                None if stored.seqs.contains(&seq) => Verdict::Reject(RejectReason::SeqTaken),
                None => {
                    *left -= 1;
                    stored
                        .holders
                        .insert(holder, entry.holder.key.as_str().to_owned());
                    stored.seqs.insert(seq);
                    Verdict::Insert
                }
            }
        })
        .collect()
}

/// What PostgreSQL decided for each of `redemptions` it has seen, by index: stored (the user's
/// row holds this key), refused because the user holds another key, or refused for the reason
/// recorded (of that voucher number, when given: an older refusal of the same key, since
/// repaired and granted again, is not this grant's fate). The ones it has not seen yet are left
/// out.
pub async fn fates(
    pool: &PgPool,
    redemptions: &[(CampaignId, &Holder, Option<i64>)],
) -> Result<Vec<(usize, Fate)>, sqlx::Error> {
    let rows: Vec<(i64, Option<String>, Option<String>)> = sqlx::query_as(
        "select w.i, r.idempotency_key, j.reason
         from unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[]) with ordinality
              as w (campaign_id, user_id, idempotency_key, seq, i)
         left join redemptions r
                on r.campaign_id = w.campaign_id and r.user_id = w.user_id
         left join rejected_redemptions j
                on j.campaign_id = w.campaign_id and j.user_id = w.user_id
               and j.idempotency_key = w.idempotency_key and (w.seq is null or j.seq = w.seq)
         where r.user_id is not null or j.user_id is not null",
    )
    .bind(
        redemptions
            .iter()
            .map(|(c, _, _)| c.as_uuid())
            .collect::<Vec<_>>(),
    )
    .bind(
        redemptions
            .iter()
            .map(|(_, h, _)| h.user.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        redemptions
            .iter()
            .map(|(_, h, _)| h.key.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        redemptions
            .iter()
            .map(|(_, _, seq)| *seq)
            .collect::<Vec<_>>(),
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(ordinal, stored_key, reason)| {
            let i = usize::try_from(ordinal - 1).ok()?;
            let fate = match stored_key {
                Some(key) if key == redemptions.get(i)?.1.key.as_str() => Fate::Stored,
                Some(_) => Fate::Refused(RejectReason::UserHoldsOtherKey),
                None => Fate::Refused(RejectReason::parse(reason.as_deref()?)?),
            };
            Some((i, fate))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI32, Ordering};

    use time::OffsetDateTime;

    use super::*;
    use crate::domain::{CampaignId, Holder};

    /// An entry with a voucher number of its own.
    fn entry(campaign: Uuid, user: &str, key: &str) -> OutboxEntry {
        static NEXT: AtomicI32 = AtomicI32::new(1);
        numbered(campaign, user, key, NEXT.fetch_add(1, Ordering::Relaxed))
    }

    fn numbered(campaign: Uuid, user: &str, key: &str, seq: i32) -> OutboxEntry {
        OutboxEntry {
            id: "0-1".into(),
            campaign: CampaignId::from(campaign),
            holder: Holder::parse(user, key).unwrap(),
            seq,
            at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn holding(holders: &[(Uuid, &str, &str)]) -> Stored {
        Stored {
            holders: holders
                .iter()
                .map(|(c, user, key)| ((*c, user.to_string()), key.to_string()))
                .collect(),
            seqs: HashSet::new(),
        }
    }

    #[test]
    fn new_holders_are_inserted_up_to_capacity_then_refused_as_sold_out() {
        let c = Uuid::new_v4();
        let entries = [entry(c, "a", "k"), entry(c, "b", "k"), entry(c, "c", "k")];
        let verdicts = classify(&entries, HashMap::from([(c, 2)]), Stored::default());
        assert_eq!(
            verdicts,
            [
                Verdict::Insert,
                Verdict::Insert,
                Verdict::Reject(RejectReason::SoldOut)
            ]
        );
    }

    #[test]
    fn a_redelivered_entry_is_a_no_op_and_uses_no_capacity() {
        let c = Uuid::new_v4();
        let entries = [entry(c, "a", "k"), entry(c, "b", "k")];
        let stored = holding(&[(c, "a", "k")]);
        let verdicts = classify(&entries, HashMap::from([(c, 1)]), stored);
        assert_eq!(verdicts, [Verdict::AlreadyStored, Verdict::Insert]);
    }

    #[test]
    fn a_second_key_for_a_holder_is_refused_even_within_one_batch() {
        let c = Uuid::new_v4();
        let entries = [
            entry(c, "a", "k1"),
            entry(c, "a", "k2"),
            entry(c, "a", "k1"),
        ];
        let verdicts = classify(&entries, HashMap::from([(c, 5)]), Stored::default());
        assert_eq!(
            verdicts,
            [
                Verdict::Insert,
                Verdict::Reject(RejectReason::UserHoldsOtherKey),
                Verdict::AlreadyStored
            ]
        );
    }

    #[test]
    fn an_entry_whose_number_is_taken_holds_no_room() {
        let c = Uuid::new_v4();
        // Number 1 is stored; number 2 comes twice in the batch.
        let entries = [
            numbered(c, "a", "k", 1),
            numbered(c, "b", "k", 2),
            numbered(c, "c", "k", 2),
            numbered(c, "d", "k", 3),
        ];
        let stored = Stored {
            seqs: HashSet::from([(c, 1)]),
            ..Stored::default()
        };
        let verdicts = classify(&entries, HashMap::from([(c, 2)]), stored);
        let taken = Verdict::Reject(RejectReason::SeqTaken);
        assert_eq!(verdicts, [taken, Verdict::Insert, taken, Verdict::Insert]);
    }

    #[test]
    fn an_entry_of_an_unknown_campaign_is_refused() {
        let verdicts = classify(
            &[entry(Uuid::new_v4(), "a", "k")],
            HashMap::new(),
            Stored::default(),
        );
        assert_eq!(verdicts, [Verdict::Reject(RejectReason::UnknownCampaign)]);
    }
}
