//! A 3-member etcd cluster (Debian's `etcd-server`) whose peer traffic crosses one `atoll link`
//! per member (the link listens at the member's advertised peer URL and forwards to its peer
//! listener): the peer the strong and promotion benchmarks measure against.

use anyhow::{Context, Result};
use atoll_link::{LinkServer, LinkSpec};
use atoll_testkit::free_ports;
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running etcd member, killed on drop.
pub struct EtcdMember {
    pub name: String,
    /// Its client URL's address (`http://{client}/v3/...`).
    pub client: SocketAddr,
    pub child: Option<Child>,
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How to start the cluster.
pub struct EtcdOptions<'a> {
    pub etcd_bin: &'a Path,
    /// One-way delay of every member's peer link.
    pub link_delay_ms: f64,
    /// `--heartbeat-interval` and `--election-timeout`, in ms.
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    /// `--initial-cluster-token`.
    pub token: &'a str,
}

pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    _links: LinkServer,
}

impl EtcdCluster {
    /// Starts the three members with their data and logs under `dir`.
    pub async fn start(o: &EtcdOptions<'_>, dir: &Path) -> Result<EtcdCluster> {
        let ports = free_ports(6)?;
        let names = ["etcd-1", "etcd-2", "etcd-3"];
        let addr = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        let specs = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                LinkSpec::new(
                    format!("to-{n}"),
                    SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    addr(ports[3 + i]),
                )
                .with_delay(o.link_delay_ms)
            })
            .collect();
        let links = LinkServer::start(specs, None)
            .await
            .context("the etcd links did not start")?;
        let advertised: Vec<SocketAddr> = links.specs().iter().map(|s| s.listen).collect();
        let initial = names
            .iter()
            .zip(&advertised)
            .map(|(n, a)| format!("{n}=http://{a}"))
            .collect::<Vec<_>>()
            .join(",");
        std::fs::create_dir_all(dir)?;
        let mut members = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let log = std::fs::File::create(dir.join(format!("{n}.log")))?;
            let client = addr(ports[i]);
            let child = Command::new(o.etcd_bin)
                .args(["--name", n])
                .arg("--data-dir")
                .arg(dir.join(n))
                .arg("--listen-client-urls")
                .arg(format!("http://{client}"))
                .arg("--advertise-client-urls")
                .arg(format!("http://{client}"))
                .arg("--listen-peer-urls")
                .arg(format!("http://{}", addr(ports[3 + i])))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://{}", advertised[i]))
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", o.token])
                .args(["--heartbeat-interval", &o.heartbeat_ms.to_string()])
                .args(["--election-timeout", &o.election_ms.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()
                .with_context(|| format!("cannot start {}", o.etcd_bin.display()))?;
            members.push(EtcdMember {
                name: n.to_string(),
                client,
                child: Some(child),
            });
        }
        Ok(EtcdCluster {
            members,
            _links: links,
        })
    }

    /// The index of the member that is the leader, once every member answers and agrees on one.
    pub async fn leader(&self, http: &reqwest::Client) -> Option<usize> {
        let mut leader = None;
        let mut ids = Vec::new();
        for m in &self.members {
            let url = format!("http://{}/v3/maintenance/status", m.client);
            let v: Value = http
                .post(url)
                .json(&json!({}))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let l = v["leader"].as_str()?.to_string();
            if leader.get_or_insert_with(|| l.clone()) != &l {
                return None;
            }
            ids.push(v["header"]["member_id"].as_str()?.to_string());
        }
        let leader = leader?;
        ids.iter().position(|id| *id == leader)
    }
}
