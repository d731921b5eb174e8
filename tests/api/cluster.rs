//! On a Redis Cluster: campaigns spread over every master, and failovers under client load (every
//! request and answer recorded and checked afterwards).

use std::collections::HashSet;

use redis::Value;
use voucher_gateway::redis::keys;

use crate::helpers::{TestApp, Topology};

/// The slot ranges of the cluster's masters: (first, last, master's port).
async fn slot_ranges(con: &mut impl redis::aio::ConnectionLike) -> Vec<(u16, u16, i64)> {
    let ranges: Vec<Vec<Value>> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(con)
        .await
        .unwrap();
    ranges
        .iter()
        .map(|range| {
            let master: Vec<Value> = redis::from_redis_value_ref(&range[2]).unwrap();
            (
                redis::from_redis_value_ref(&range[0]).unwrap(),
                redis::from_redis_value_ref(&range[1]).unwrap(),
                redis::from_redis_value_ref(&master[1]).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn campaigns_land_on_every_master_of_a_new_three_master_cluster() {
    let app = TestApp::spawn_on(Topology::Cluster).await;
    let ranges = slot_ranges(&mut app.redis.clone()).await;
    let masters: HashSet<i64> = ranges.iter().map(|(_, _, port)| *port).collect();
    assert_eq!(masters.len(), 3);
    let mut holding = HashSet::new();
    for _ in 0..48 {
        let id = app.create_campaign(1).await;
        let key = app.keys(id).campaign;
        let tag = key.split(['{', '}']).nth(1).unwrap();
        let slot = keys::slot(tag);
        let (_, _, port) = ranges
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .unwrap();
        holding.insert(*port);
        let loaded: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut app.redis.clone())
            .await
            .unwrap();
        assert!(loaded);
    }
    assert_eq!(holding, masters, "every master holds campaigns");
}
