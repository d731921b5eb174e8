//! `--ack replica`: a redeem is answered once `VG_ACK_REPLICAS` replicas of its master have
//! received the decision. Redeems queue per lane and go in groups: the group's scripts, then one
//! WAIT, in one round trip on one connection (group replication, as a database's group commit).
//! While a group waits for its replicas the next one gathers, so under load one WAIT answers
//! many redeems and the connection never blocks once per request.
//!
//! A lane is one for a single server, one per shard on a cluster (a group's commands share one
//! slot). The lanes' connection is their own, apart from the one other requests share: a blocked
//! WAIT must not hold up their commands. On a cluster the lanes of the shards one master holds
//! share its connection, so their groups take turns.

use std::time::{Duration, Instant};

use metrics::histogram;
use redis::RedisResult;
use tokio::sync::{mpsc, oneshot};

use super::GatewayError;
use crate::{
    domain::{CampaignId, IdempotencyKey, UserId},
    redis::{
        Connection,
        keys::{CampaignKeys, Shards},
        scripts::{self, Decision, Redeem},
    },
    telemetry::metrics::ACK_WAIT_DURATION,
};

/// Most redeems in one group: bounds the round trip's size and the time its scripts hold Redis.
const MAX_GROUP: usize = 512;

pub struct Replication {
    lanes: Vec<mpsc::UnboundedSender<Pending>>,
    timeout: Duration,
}

/// A redeem waiting for its group.
struct Pending {
    /// When its request gives up: a WAIT need not outlast its group's requests.
    deadline: Instant,
    keys: CampaignKeys,
    campaign: CampaignId,
    user: UserId,
    key: IdempotencyKey,
    answer: oneshot::Sender<RedisResult<Acknowledged>>,
}

/// A decision, and whether enough replicas received it in time.
struct Acknowledged {
    decision: Decision,
    replicated: bool,
}

impl Replication {
    /// Starts the lanes on `con` (a connection of their own): one per shard on a cluster, else
    /// one. Each lane's task ends when the `Replication` is dropped.
    pub fn start(con: Connection, shards: &Shards, replicas: u16, timeout: Duration) -> Self {
        let lanes = match con {
            Connection::Server(_) => 1,
            Connection::Cluster(_) => shards.count(),
        };
        let lanes = (0..lanes)
            .map(|lane| {
                let (sender, queue) = mpsc::unbounded_channel();
                let lane = Lane {
                    con: con.clone(),
                    wait_key: shards.shard(lane).wait,
                    replicas,
                };
                tokio::spawn(lane.run(queue));
                sender
            })
            .collect();
        Self { lanes, timeout }
    }

    /// Decides one redeem and waits for its replicas, for up to the acknowledgement timeout.
    pub async fn redeem(
        &self,
        keys: &CampaignKeys,
        campaign: CampaignId,
        user: &UserId,
        key: &IdempotencyKey,
    ) -> Result<Decision, GatewayError> {
        let started = Instant::now();
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            deadline: started + self.timeout,
            keys: keys.clone(),
            campaign,
            user: user.clone(),
            key: key.clone(),
            answer,
        };
        let lane = usize::from(keys.shard) % self.lanes.len();
        self.lanes[lane]
            .send(pending)
            .map_err(|_| GatewayError::NotDurable)?;
        let acknowledged = tokio::time::timeout(self.timeout, answered).await;
        histogram!(ACK_WAIT_DURATION, "mode" => "replica").record(started.elapsed().as_secs_f64());
        match acknowledged {
            // A campaign Redis does not hold is loaded and the redeem sent again.
            Ok(Ok(Ok(Acknowledged {
                decision,
                replicated,
            }))) if replicated || decision == Decision::NotLoaded => Ok(decision),
            Ok(Ok(Err(error))) => Err(error.into()),
            // Not received by enough replicas in time, or never sent (given up while queued).
            _ => Err(GatewayError::NotDurable),
        }
    }
}

struct Lane {
    con: Connection,
    wait_key: String,
    replicas: u16,
}

impl Lane {
    /// Sends one group at a time: what queued while the last one was in flight.
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Pending>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
            // A redeem whose request gave up is not sent at all.
            group.retain(|pending| !pending.answer.is_closed());
            if !group.is_empty() {
                self.send(&mut group).await;
            }
            group.clear();
        }
    }

    async fn send(&mut self, group: &mut Vec<Pending>) {
        let redeems: Vec<Redeem> = group
            .iter()
            .map(|pending| Redeem {
                keys: &pending.keys,
                campaign: pending.campaign,
                user: &pending.user,
                key: &pending.key,
            })
            .collect();
        // The WAIT ends when the first of the group's requests would give up.
        let first_deadline = group.iter().map(|pending| pending.deadline).min();
        let timeout = first_deadline
            .map_or(Duration::ZERO, |at| {
                at.saturating_duration_since(Instant::now())
            })
            .max(Duration::from_millis(1));
        let sent = scripts::redeem_replicated(
            &mut self.con,
            &redeems,
            &self.wait_key,
            self.replicas,
            timeout,
        )
        .await;
        drop(redeems);
        match sent {
            Ok(replicated) => {
                let enough = replicated.replicas >= u64::from(self.replicas);
                if !enough {
                    tracing::warn!(
                        replicas = replicated.replicas,
                        wanted = self.replicas,
                        "redeems not received by enough replicas in time; answered 503"
                    );
                }
                for (pending, decision) in group.drain(..).zip(replicated.decisions) {
                    let _ = pending.answer.send(decision.map(|decision| Acknowledged {
                        decision,
                        replicated: enough,
                    }));
                }
            }
            Err(error) => {
                for pending in group.drain(..) {
                    let _ = pending.answer.send(Err(error.clone()));
                }
            }
        }
    }
}
