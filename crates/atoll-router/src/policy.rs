//! Routing decisions: which regions a request (proxy) or a query (DNS) goes to, in order of
//! preference. Pure: the caller passes the regions' current view and a random number.

use atoll_core::RegionId;
use atoll_core::geo::great_circle_km;
use serde::{Deserialize, Serialize};

/// How a routed name picks among healthy regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// Nearest healthy region: by the client's location (DNS: EDNS Client Subnet or resolver
    /// address through the prefix table) when known, else by the router's measured RTT.
    Latency,
    /// The first healthy region in the configured order.
    Failover,
    /// Weighted random among healthy regions; weight 0 is used only when nothing else is healthy.
    Weighted,
}

/// What to do when no region is healthy. Never silent: the router exports
/// `atoll_router_fail_open_active`, logs at error level and shows it in status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoHealthy {
    /// Serve every (undrained) region, as Route 53 does.
    FailOpen,
    /// Serve nothing (proxy: 503; DNS: SERVFAIL).
    FailClosed,
    /// Serve the regions that were healthy most recently.
    LastKnownGood,
}

/// How a decision was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// From healthy regions.
    Normal,
    /// Nothing healthy: all regions served.
    FailOpen,
    /// Nothing healthy: nothing served.
    FailClosed,
    /// Nothing healthy: the last healthy set served.
    LastKnownGood,
}

/// One region as the policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub region: RegionId,
    /// Healthy by the checks (and not ejected).
    pub healthy: bool,
    /// Drained by an operator: never chosen, except under fail-open when everything is drained.
    pub drained: bool,
    /// Staged-failback share in [0, 1].
    pub ramp: f64,
    pub weight: u32,
    /// Position in the configured order (failover order, tie-breaks).
    pub order: usize,
    /// Router-to-region round trip.
    pub rtt_ms: Option<f64>,
    /// (lat, lon) of the region.
    pub location: Option<(f64, f64)>,
}

/// A routing decision: regions in order of preference (the first is the answer; the rest are
/// where the proxy retries).
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub ranked: Vec<RegionId>,
    pub mode: Mode,
}

fn rank_by_policy(policy: PolicyKind, cands: &mut [&Candidate], client: Option<(f64, f64)>) {
    match policy {
        PolicyKind::Failover | PolicyKind::Weighted => cands.sort_by_key(|c| c.order),
        PolicyKind::Latency => cands.sort_by(|a, b| {
            let key = |c: &Candidate| match (client, c.location) {
                (Some((la, lo)), Some((rla, rlo))) => (0, great_circle_km(la, lo, rla, rlo)),
                _ => (1, c.rtt_ms.unwrap_or(f64::MAX)),
            };
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0)
                .then(ka.1.total_cmp(&kb.1))
                .then(a.order.cmp(&b.order))
        }),
    }
}

/// Chooses regions for one request or query. `rand` is uniform in [0, 1).
pub fn choose(
    policy: PolicyKind,
    no_healthy: NoHealthy,
    cands: &[Candidate],
    client: Option<(f64, f64)>,
    last_known_good: &[RegionId],
    rand: f64,
) -> Choice {
    let mut routable: Vec<&Candidate> = cands.iter().filter(|c| c.healthy && !c.drained).collect();
    if routable.is_empty() {
        let mut pool: Vec<&Candidate> = match no_healthy {
            NoHealthy::FailClosed => Vec::new(),
            NoHealthy::FailOpen => {
                let undrained: Vec<&Candidate> = cands.iter().filter(|c| !c.drained).collect();
                if undrained.is_empty() {
                    cands.iter().collect()
                } else {
                    undrained
                }
            }
            NoHealthy::LastKnownGood => cands
                .iter()
                .filter(|c| !c.drained && last_known_good.contains(&c.region))
                .collect(),
        };
        rank_by_policy(policy, &mut pool, client);
        let mode = match no_healthy {
            NoHealthy::FailOpen => Mode::FailOpen,
            NoHealthy::FailClosed => Mode::FailClosed,
            NoHealthy::LastKnownGood => Mode::LastKnownGood,
        };
        return Choice {
            ranked: pool.into_iter().map(|c| c.region.clone()).collect(),
            mode,
        };
    }
    if policy == PolicyKind::Weighted {
        // Weight 0 regions serve only when no weighted region is healthy.
        if routable.iter().any(|c| c.weight > 0) {
            routable.retain(|c| c.weight > 0);
        }
        rank_by_policy(policy, &mut routable, client);
        let weights: Vec<f64> = routable
            .iter()
            .map(|c| f64::from(c.weight.max(1)) * c.ramp)
            .collect();
        let total: f64 = weights.iter().sum();
        let pick = if total > 0.0 {
            let mut x = rand.clamp(0.0, 1.0) * total;
            let mut idx = weights.len() - 1;
            for (i, w) in weights.iter().enumerate() {
                if x < *w {
                    idx = i;
                    break;
                }
                x -= w;
            }
            idx
        } else {
            0
        };
        let first = routable.remove(pick);
        routable.insert(0, first);
    } else {
        rank_by_policy(policy, &mut routable, client);
        // Staged failback: a recovering region at the top takes only its ramp's share.
        if routable.len() > 1 && routable[0].ramp < 1.0 && rand >= routable[0].ramp {
            routable.swap(0, 1);
        }
    }
    Choice {
        ranked: routable.into_iter().map(|c| c.region.clone()).collect(),
        mode: Mode::Normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, order: usize) -> Candidate {
        Candidate {
            region: RegionId::new(name).unwrap(),
            healthy: true,
            drained: false,
            ramp: 1.0,
            weight: 1,
            order,
            rtt_ms: None,
            location: None,
        }
    }

    fn names(ch: &Choice) -> Vec<&str> {
        ch.ranked.iter().map(|r| r.as_str()).collect()
    }

    #[test]
    fn failover_picks_first_healthy_in_order() {
        let mut v = vec![c("a", 0), c("b", 1), c("c", 2)];
        let ch = choose(
            PolicyKind::Failover,
            NoHealthy::FailOpen,
            &v,
            None,
            &[],
            0.5,
        );
        assert_eq!(names(&ch), ["a", "b", "c"]);
        v[0].healthy = false;
        let ch = choose(
            PolicyKind::Failover,
            NoHealthy::FailOpen,
            &v,
            None,
            &[],
            0.5,
        );
        assert_eq!(names(&ch), ["b", "c"]);
        v[1].drained = true;
        let ch = choose(
            PolicyKind::Failover,
            NoHealthy::FailOpen,
            &v,
            None,
            &[],
            0.5,
        );
        assert_eq!(names(&ch), ["c"]);
        assert_eq!(ch.mode, Mode::Normal);
    }

    #[test]
    fn latency_uses_client_location_then_rtt() {
        let mut a = c("us-east-1", 0);
        a.location = Some((38.9, -77.4));
        a.rtt_ms = Some(1.0);
        let mut b = c("eu-west-1", 1);
        b.location = Some((53.3, -6.3));
        b.rtt_ms = Some(50.0);
        let v = vec![a, b];
        // A client in Paris goes to Dublin.
        let ch = choose(
            PolicyKind::Latency,
            NoHealthy::FailOpen,
            &v,
            Some((48.9, 2.35)),
            &[],
            0.0,
        );
        assert_eq!(names(&ch)[0], "eu-west-1");
        // Unknown client: lowest RTT.
        let ch = choose(PolicyKind::Latency, NoHealthy::FailOpen, &v, None, &[], 0.0);
        assert_eq!(names(&ch)[0], "us-east-1");
    }

    #[test]
    fn weighted_respects_weights_and_zero_weight_backup() {
        let mut a = c("a", 0);
        a.weight = 3;
        let mut b = c("b", 1);
        b.weight = 1;
        let mut z = c("z", 2);
        z.weight = 0;
        let v = vec![a, b, z];
        let mut counts = [0; 2];
        for i in 0..1000 {
            let ch = choose(
                PolicyKind::Weighted,
                NoHealthy::FailOpen,
                &v,
                None,
                &[],
                i as f64 / 1000.0,
            );
            assert!(!ch.ranked.iter().any(|r| r.as_str() == "z"));
            counts[usize::from(ch.ranked[0].as_str() == "b")] += 1;
        }
        assert_eq!(counts, [750, 250]);
        let mut v2 = v.clone();
        v2[0].healthy = false;
        v2[1].healthy = false;
        let ch = choose(
            PolicyKind::Weighted,
            NoHealthy::FailClosed,
            &v2,
            None,
            &[],
            0.3,
        );
        assert_eq!(names(&ch), ["z"]);
    }

    #[test]
    fn nothing_healthy_follows_the_declared_policy() {
        let mut v = vec![c("a", 0), c("b", 1), c("c", 2)];
        for x in &mut v {
            x.healthy = false;
        }
        v[2].drained = true;
        let open = choose(
            PolicyKind::Failover,
            NoHealthy::FailOpen,
            &v,
            None,
            &[],
            0.0,
        );
        assert_eq!((names(&open), open.mode), (vec!["a", "b"], Mode::FailOpen));
        let closed = choose(
            PolicyKind::Failover,
            NoHealthy::FailClosed,
            &v,
            None,
            &[],
            0.0,
        );
        assert_eq!((closed.ranked.len(), closed.mode), (0, Mode::FailClosed));
        let lkg = choose(
            PolicyKind::Failover,
            NoHealthy::LastKnownGood,
            &v,
            None,
            &[RegionId::new("b").unwrap()],
            0.0,
        );
        assert_eq!((names(&lkg), lkg.mode), (vec!["b"], Mode::LastKnownGood));
    }

    #[test]
    fn staged_failback_shares_traffic_by_ramp() {
        let mut v = vec![c("a", 0), c("b", 1)];
        v[0].ramp = 0.25;
        let mut to_a = 0;
        for i in 0..100 {
            let ch = choose(
                PolicyKind::Failover,
                NoHealthy::FailOpen,
                &v,
                None,
                &[],
                i as f64 / 100.0,
            );
            if ch.ranked[0].as_str() == "a" {
                to_a += 1;
            }
            assert_eq!(ch.ranked.len(), 2, "the other region stays as a fallback");
        }
        assert_eq!(to_a, 25);
    }
}
