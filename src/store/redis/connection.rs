//! What a [`RedisStore`](super::RedisStore) talks through: one server, or a
//! Redis Cluster.
//!
//! On a cluster every command names one key, or keys the client splits by
//! slot itself (`UNLINK`, `EXISTS`); a pipeline holds one key's commands,
//! because a cluster pipeline must stay within one slot. Listing visits
//! every master.

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, Pipeline, RedisResult, Value};

/// Keys asked for per `SCAN` round and deleted per command.
pub(super) const BATCH: usize = 500;

/// Single-key commands in flight at once on a cluster. With 64, a burst of
/// them redirected during resharding stalled the client past its response
/// timeout (seen in the resharding test about one run in three); with 8,
/// never in 14 runs.
const CONCURRENT: usize = 8;

#[derive(Clone)]
pub(super) enum Connection {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    pub(super) async fn query<T: FromRedisValue>(&self, command: &Cmd) -> RedisResult<T> {
        match self {
            Self::Server(connection) => command.query_async(&mut connection.clone()).await,
            Self::Cluster(connection) => command.query_async(&mut connection.clone()).await,
        }
    }

    /// A pipeline whose commands, on a cluster, all name keys of one slot.
    pub(super) async fn query_pipeline<T: FromRedisValue>(&self, pipeline: &Pipeline) -> RedisResult<T> {
        match self {
            Self::Server(connection) => pipeline.query_async(&mut connection.clone()).await,
            Self::Cluster(connection) => pipeline.query_async(&mut connection.clone()).await,
        }
    }

    /// The commands `build` adds for each key, every key's answers in key
    /// order: one pipeline on one server; on a cluster, each command on
    /// its own, many at once (so a key's commands are not atomic there).
    pub(super) async fn per_key(
        &self,
        keys: &[String],
        build: impl Fn(&mut Pipeline, &str),
    ) -> RedisResult<Vec<Value>> {
        match self {
            Self::Server(_) => {
                let mut pipeline = redis::pipe();
                for key in keys {
                    build(&mut pipeline, key);
                }
                self.query_pipeline(&pipeline).await
            }
            Self::Cluster(connection) => {
                // Each command alone: a pipeline's redirections during
                // resharding (`ASK`) are not followed, a command's are.
                let mut commands = Vec::with_capacity(keys.len());
                for key in keys {
                    let mut pipeline = redis::pipe();
                    build(&mut pipeline, key);
                    commands.extend(pipeline.cmd_iter().cloned());
                }
                futures_util::stream::iter(commands)
                    .map(|command| {
                        let mut connection = connection.clone();
                        async move { command.query_async::<Value>(&mut connection).await }
                    })
                    .buffered(CONCURRENT)
                    .collect::<Vec<RedisResult<Value>>>()
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }

    /// Every key matching `pattern`, with `SCAN` in batches (never `KEYS`),
    /// on every master of a cluster.
    pub(super) async fn scan(&self, pattern: &str) -> RedisResult<Vec<String>> {
        match self {
            Self::Server(connection) => {
                scan_node(pattern, |command| {
                    let mut connection = connection.clone();
                    async move { command.query_async(&mut connection).await }
                })
                .await
            }
            Self::Cluster(connection) => {
                let mut keys = Vec::new();
                for (host, port) in self.masters().await? {
                    let node = scan_node(pattern, |command| {
                        let (mut connection, routing) = (
                            connection.clone(),
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                                host: host.clone(),
                                port,
                            }),
                        );
                        async move {
                            let answer = connection.route_command(command, routing).await?;
                            Ok(redis::from_redis_value(answer)?)
                        }
                    });
                    keys.extend(node.await?);
                }
                // A key that moved between masters while they were scanned.
                keys.sort_unstable();
                keys.dedup();
                Ok(keys)
            }
        }
    }

    /// The cluster's masters that are up, as `(host, port)`, sorted; one
    /// server has none.
    pub(super) async fn masters(&self) -> RedisResult<Vec<(String, u16)>> {
        if !self.is_cluster() {
            return Ok(Vec::new());
        }
        let nodes: String = self.query(redis::cmd("CLUSTER").arg("NODES")).await?;
        Ok(masters_in(&nodes))
    }
}

async fn scan_node<F, Answer>(pattern: &str, send: F) -> RedisResult<Vec<String>>
where
    F: Fn(Cmd) -> Answer,
    Answer: Future<Output = RedisResult<(u64, Vec<String>)>>,
{
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let mut command = redis::cmd("SCAN");
        command.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(BATCH);
        let (next, batch) = send(command).await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// The masters `CLUSTER NODES` lists as up: lines of `id host:port@bus[,name]
/// flags master-id …`, flags such as `myself,master` or `master,fail`.
pub(super) fn masters_in(nodes: &str) -> Vec<(String, u16)> {
    let mut masters: Vec<(String, u16)> = nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let address = fields.nth(1)?;
            let flags = fields.next()?;
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|flag| matches!(*flag, "fail" | "fail?" | "noaddr")) {
                return None;
            }
            let host_port = address.split(['@', ',']).next()?;
            let (host, port) = host_port.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            (!host.is_empty() && port != 0).then(|| (host.trim_matches(['[', ']']).to_owned(), port))
        })
        .collect();
    masters.sort();
    masters.dedup();
    masters
}

/// The node URLs of a `redis+cluster://[user:password@]host:port[,host:port…]`
/// URL (`rediss+cluster://` for TLS), each as a plain `redis://` (or
/// `rediss://`) URL with the same credentials; `None` for any other URL.
/// The error says what is wrong, never the password.
pub(super) fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, String>> {
    let (scheme, rest) = url.split_once("://")?;
    let plain = match scheme.to_ascii_lowercase().as_str() {
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if rest.len() > authority.len() && !matches!(&rest[authority.len()..], "" | "/") {
        return Some(Err(
            "a cluster URL takes no database, path or options: only `user:password@host:port,host:port`".into(),
        ));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let mut nodes = Vec::new();
    for host in hosts.split(',') {
        let host = host.trim();
        let valid = host.rsplit_once(':').is_some_and(|(name, port)| {
            !name.is_empty() && port.parse::<u16>().is_ok_and(|port| port != 0) && !name.contains(['@', ' '])
        });
        if !valid {
            return Some(Err(format!("`{host}` is not a node: write host:port")));
        }
        let node = match userinfo {
            Some(userinfo) => format!("{plain}://{userinfo}@{host}"),
            None => format!("{plain}://{host}"),
        };
        if url::Url::parse(&node).is_err() {
            return Some(Err(format!("`{host}` is not a node: write host:port")));
        }
        nodes.push(node);
    }
    Some(Ok(nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_nodes_with_the_credentials() {
        assert_eq!(
            cluster_nodes("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001/"),
            Some(Ok(vec![
                "redis://u:p@10.0.0.1:7000".to_owned(),
                "redis://u:p@10.0.0.2:7001".to_owned()
            ]))
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://a:1"),
            Some(Ok(vec!["rediss://a:1".to_owned()]))
        );
        assert_eq!(cluster_nodes("redis://a:1"), None);
        for bad in [
            "redis+cluster://",
            "redis+cluster://a",
            "redis+cluster://a:0",
            "redis+cluster://a:1,",
            "redis+cluster://a:1/2",
        ] {
            assert!(matches!(cluster_nodes(bad), Some(Err(_))), "{bad}");
        }
        let error = cluster_nodes("redis+cluster://u:secret@a:1,b").unwrap().unwrap_err();
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let nodes = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002,host-b master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1426238318243 3 connected 10923-16383
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
bad line
";
        assert_eq!(
            masters_in(nodes),
            [("127.0.0.1".to_owned(), 30001), ("127.0.0.1".to_owned(), 30002)]
        );
    }

    proptest::proptest! {
        #[test]
        fn any_cluster_url_parses_to_nodes_or_says_why_without_the_password(
            text in "(redis|rediss)\\+cluster://([a-z]{0,4}:secret@)?[a-z0-9.:,\\[\\]@ ]{0,40}(/[a-z0-9]{0,3})?"
        ) {
            let shown = crate::store::location::redact(&text);
            proptest::prop_assert!(!shown.contains("secret"), "{shown}");
            match cluster_nodes(&text) {
                Some(Ok(nodes)) => {
                    proptest::prop_assert!(!nodes.is_empty());
                    for node in nodes {
                        proptest::prop_assert!(url::Url::parse(&node).is_ok(), "{node}");
                    }
                }
                Some(Err(error)) => proptest::prop_assert!(!error.contains("secret"), "{error}"),
                None => proptest::prop_assert!(false, "a cluster URL"),
            }
        }

        #[test]
        fn any_cluster_nodes_text_reads_without_panicking(text in "[ -~\\n]{0,300}") {
            let _ = masters_in(&text);
        }
    }
}
