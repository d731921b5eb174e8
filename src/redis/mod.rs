//! Redis, and the only place that speaks to it: the connections (to one server or to a Redis
//! Cluster), the key layout, the scripts, the outbox streams, and the reads of a campaign's
//! state. Every command, key and hash field lives here.

pub mod fates;
pub mod keys;
pub mod marker;
pub mod outbox;
pub mod scripts;
pub mod state;

use std::time::Duration;

use anyhow::{Context, bail};
use redis::{
    Client, Cmd, FromRedisValue, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    RedisFuture, RedisResult, TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo},
};

/// Retries of a cluster command that met a moved slot, a lost connection or a failover in
/// progress, and the waits between them: a failover takes seconds, and a request must fail within
/// the Redis timeout rather than wait for the client's default of over a second per retry.
const CLUSTER_RETRIES: u32 = 6;
const CLUSTER_MIN_RETRY_WAIT_MS: u64 = 20;
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 500;

/// Where Redis is: one server, or a Redis Cluster reached through seed nodes.
#[derive(Clone)]
pub struct Redis {
    target: Target,
    timeout: Duration,
}

#[derive(Clone)]
enum Target {
    Server {
        client: Client,
        /// The same server over RESP3, which subscriptions need.
        resp3: Box<Client>,
    },
    Cluster {
        seeds: Vec<redis::ConnectionInfo>,
        ca: Option<Vec<u8>>,
    },
}

/// A multiplexed connection to one server or to every node of a cluster. It reconnects by itself
/// and follows a cluster's slots as they move; clones share it.
#[derive(Clone)]
pub enum Connection {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Redis {
    /// `urls`: one URL, or with `cluster` one or more seed nodes separated by commas (`redis://`
    /// or `rediss://`); `ca`: the PEM certificate authorities that `rediss://` trusts instead of
    /// the system's. Errors never name a URL: it may hold a password.
    pub fn open(
        urls: &str,
        cluster: bool,
        timeout: Duration,
        ca: Option<Vec<u8>>,
    ) -> anyhow::Result<Self> {
        // TLS through rustls with ring; a second call finds it installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let target = if cluster {
            let seeds = urls
                .split(',')
                .map(|url| url.trim().into_connection_info())
                .collect::<RedisResult<Vec<_>>>()
                .context("invalid Redis URL")?;
            // Checks the seeds agree on credentials and TLS.
            cluster_builder(&seeds, &ca, timeout)
                .build()
                .context("invalid Redis Cluster seeds")?;
            Target::Cluster { seeds, ca }
        } else {
            if urls.contains(',') {
                bail!(
                    "REDIS_URL lists several URLs: set VG_REDIS_CLUSTER=true for a Redis Cluster"
                );
            }
            let info = urls.into_connection_info().context("invalid Redis URL")?;
            let resp3 = info.clone().set_redis_settings(
                info.redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3),
            );
            let client = |info| match &ca {
                Some(ca) => Client::build_with_tls(info, certificates(ca.clone())),
                None => Client::open(info),
            };
            Target::Server {
                client: client(info).context("invalid Redis URL")?,
                resp3: Box::new(client(resp3).context("invalid Redis URL")?),
            }
        };
        Ok(Self { target, timeout })
    }

    /// The shared connection: one per process for every request and every short command. A pool
    /// on the redeem path would halve throughput.
    pub async fn connect(&self) -> RedisResult<Connection> {
        self.connect_with(self.timeout).await
    }

    /// A connection of its own for blocking reads of up to `block`: a blocked read holds up every
    /// command behind it on its connection, and must not time out while it waits.
    pub async fn connect_blocking(&self, block: Duration) -> RedisResult<Connection> {
        self.connect_with(block + self.timeout).await
    }

    /// Subscribes to `channels` (sharded channels on a cluster): their messages' payloads arrive
    /// on the subscription. It resubscribes by itself after a lost connection and, on a cluster,
    /// follows each channel's slot to its new master; messages published meanwhile are missed.
    pub async fn subscribe(&self, channels: &[String]) -> RedisResult<Subscription> {
        let (sender, pushes) = tokio::sync::mpsc::unbounded_channel();
        let connection = match &self.target {
            Target::Server { resp3, .. } => {
                let config = self
                    .manager_config(self.timeout)
                    .set_push_sender(sender)
                    .set_automatic_resubscription();
                let mut manager = resp3.get_connection_manager_with_config(config).await?;
                manager.subscribe(channels).await?;
                Connection::Server(manager)
            }
            Target::Cluster { seeds, ca } => {
                let client = cluster_builder(seeds, ca, self.timeout)
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(sender)
                    .build()?;
                let mut cluster = client.get_async_connection().await?;
                // One command per channel: the channels of one SSUBSCRIBE share a slot.
                for channel in channels {
                    cluster.ssubscribe(channel).await?;
                }
                Connection::Cluster(cluster)
            }
        };
        Ok(Subscription { connection, pushes })
    }

    fn manager_config(&self, response_timeout: Duration) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(self.timeout)
    }

    async fn connect_with(&self, response_timeout: Duration) -> RedisResult<Connection> {
        match &self.target {
            Target::Server { client, .. } => {
                let config = self.manager_config(response_timeout);
                let manager = client.get_connection_manager_with_config(config).await?;
                Ok(Connection::Server(manager))
            }
            Target::Cluster { seeds, ca } => {
                let client = cluster_builder(seeds, ca, self.timeout)
                    .response_timeout(response_timeout)
                    .build()?;
                Ok(Connection::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

/// The messages of subscribed channels.
pub struct Subscription {
    connection: Connection,
    pushes: tokio::sync::mpsc::UnboundedReceiver<PushInfo>,
}

impl Subscription {
    /// The next message's payload; `None` once the connection is gone for good.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            let push = self.pushes.recv().await?;
            if push.kind == PushKind::Disconnection {
                tracing::warn!(
                    "a subscription's connection dropped; it resubscribes on reconnecting"
                );
                continue;
            }
            if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
                continue;
            }
            // [channel, payload]
            if let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) {
                return Some(payload);
            }
        }
    }

    /// Pings the subscription's servers: a connection that dropped reconnects (and resubscribes)
    /// only when a command finds it gone, and a subscription sends nothing by itself.
    pub async fn keep_alive(&mut self) -> RedisResult<()> {
        self.connection.ping_every_master().await
    }
}

fn cluster_builder(
    seeds: &[redis::ConnectionInfo],
    ca: &Option<Vec<u8>>,
    timeout: Duration,
) -> ClusterClientBuilder {
    let builder = ClusterClient::builder(seeds.to_vec())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(CLUSTER_MIN_RETRY_WAIT_MS)
        .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS);
    match ca {
        Some(ca) => builder.certs(certificates(ca.clone())),
        None => builder,
    }
}

fn certificates(ca: Vec<u8>) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(ca),
    }
}

impl Connection {
    /// Runs a command without keys on the server, or on every master of a cluster; returns each
    /// node's address (empty for the one server) and reply. (A command with keys would follow
    /// their slot's redirection to one master.)
    pub async fn on_every_master<T: FromRedisValue>(
        &mut self,
        cmd: Cmd,
    ) -> RedisResult<Vec<(String, T)>> {
        match self {
            Connection::Server(manager) => {
                Ok(vec![(String::new(), cmd.query_async(manager).await?)])
            }
            Connection::Cluster(cluster) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let replies: Vec<(String, Value)> =
                    redis::from_redis_value(cluster.route_command(cmd, routing).await?)?;
                replies
                    .into_iter()
                    .map(|(node, reply)| Ok((node, redis::from_redis_value(reply)?)))
                    .collect()
            }
        }
    }

    /// Whether the server, or every master of a cluster, answers.
    pub async fn ping_every_master(&mut self) -> RedisResult<()> {
        match self {
            Connection::Server(manager) => redis::cmd("PING").query_async(manager).await,
            Connection::Cluster(cluster) => {
                let policy = Some(ResponsePolicy::AllSucceeded);
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, policy));
                cluster
                    .route_command(redis::cmd("PING"), routing)
                    .await
                    .map(drop)
            }
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Server(manager) => manager.req_packed_command(cmd),
            Connection::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Server(manager) => manager.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Server(manager) => manager.get_db(),
            Connection::Cluster(cluster) => cluster.get_db(),
        }
    }
}

/// Refuses a Redis that may evict keys: an evicted campaign or outbox would lose vouchers. On a
/// cluster every master is asked.
pub async fn check_no_eviction(con: &mut Connection) -> anyhow::Result<()> {
    let mut get = redis::cmd("CONFIG");
    get.arg("GET").arg("maxmemory-policy");
    match con.on_every_master::<Vec<String>>(get).await {
        Ok(replies) => {
            for (_node, pair) in replies {
                match pair.get(1).map(String::as_str) {
                    Some("noeviction") | None => {}
                    Some(policy) => bail!(
                        "Redis runs with maxmemory-policy {policy}: it could evict campaign state \
                         or the outbox; set maxmemory-policy noeviction"
                    ),
                }
            }
            Ok(())
        }
        // Managed Redis services often disable CONFIG; the operator must vouch for the policy.
        Err(error) => {
            tracing::warn!(%error, "cannot read Redis maxmemory-policy; it must be noeviction");
            Ok(())
        }
    }
}

/// The error for a reply of a shape `source` never gives: a bug or a foreign writer, not an
/// outage.
pub(crate) fn unexpected_reply(source: &str, reply: impl std::fmt::Display) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "unexpected reply",
        format!("{source} returned {reply}"),
    ))
}
