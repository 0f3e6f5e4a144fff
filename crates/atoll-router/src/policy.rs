//! Routing decisions: which regions a request (proxy) or a query (DNS) goes to, in order of
//! preference. Pure: the caller passes the regions' current view and a random number.
//!
//! **Following the write lease** (split-brain fencing, `docs/design/fencing.md`): each candidate
//! carries the role and epoch its `/healthz` reported. A **write** ([`Access::Write`]) goes first
//! to the healthy region whose role is `primary`, then to the policy's usual order (where a
//! standby refuses it with `ATOLL-NOT-PRIMARY` and the proxy moves on). A **failover** name puts
//! that primary first for reads and DNS answers too, so it follows the lease holder; latency and
//! weighted names route reads as usual, standbys included. Should two healthy regions claim the
//! lease (which fencing must prevent), the higher epoch wins ([`primary_of`] reports the claims so
//! that the adapters can log and count them). A **passive** region is never chosen, not even when
//! nothing is healthy. Candidates that report no role (`active`, epoch 0) change nothing.

use atoll_core::RegionId;
use atoll_core::fence::Role;
use atoll_core::geo::great_circle_km;
use serde::{Deserialize, Serialize};

/// How a routed name picks among healthy regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    /// Nearest healthy region: by the client's location (DNS: EDNS Client Subnet or resolver
    /// address through the prefix table) when known, else by the router's measured RTT.
    Latency,
    /// The healthy region whose role is `primary` (the write-lease holder) when one reports it,
    /// else the first healthy region in the configured order.
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

/// What a request does: the proxy sends writes (any method but GET, HEAD and OPTIONS) to the
/// lease holder first. DNS queries are reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Read,
    Write,
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
    /// The fencing role its `/healthz` reported (`active` when it says none); `passive` also
    /// when its health state is passive.
    pub role: Role,
    /// The lease epoch it reported (0 when none).
    pub epoch: u64,
}

/// The lease holder writes go to, as the candidates report it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Primary {
    /// The routable region claiming `primary` with the highest epoch (ties: config order).
    pub region: Option<RegionId>,
    pub epoch: u64,
    /// Every routable region claiming `primary`, with its epoch, highest epoch first. More than
    /// one means two regions believe they hold the lease: fencing must prevent it, so it is
    /// logged and counted.
    pub claims: Vec<(RegionId, u64)>,
}

fn routable(c: &Candidate) -> bool {
    c.healthy && !c.drained && c.role != Role::Passive
}

/// The primary among the routable candidates (healthy, undrained, not passive).
pub fn primary_of(cands: &[Candidate]) -> Primary {
    let mut claims: Vec<&Candidate> = cands
        .iter()
        .filter(|c| routable(c) && c.role == Role::Primary)
        .collect();
    claims.sort_by(|a, b| b.epoch.cmp(&a.epoch).then(a.order.cmp(&b.order)));
    Primary {
        region: claims.first().map(|c| c.region.clone()),
        epoch: claims.first().map_or(0, |c| c.epoch),
        claims: claims.iter().map(|c| (c.region.clone(), c.epoch)).collect(),
    }
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
    access: Access,
    cands: &[Candidate],
    client: Option<(f64, f64)>,
    last_known_good: &[RegionId],
    rand: f64,
) -> Choice {
    let mut routable: Vec<&Candidate> = cands.iter().filter(|c| routable(c)).collect();
    if routable.is_empty() {
        // A passive region serves no client traffic: never in any pool.
        let serving = cands.iter().filter(|c| c.role != Role::Passive);
        let mut pool: Vec<&Candidate> = match no_healthy {
            NoHealthy::FailClosed => Vec::new(),
            NoHealthy::FailOpen => {
                let undrained: Vec<&Candidate> = serving.clone().filter(|c| !c.drained).collect();
                if undrained.is_empty() {
                    serving.collect()
                } else {
                    undrained
                }
            }
            NoHealthy::LastKnownGood => serving
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
    // Writes (and everything a failover name answers) go to the lease holder first, whatever
    // its weight or ramp: no other region can take a write.
    if (access == Access::Write || policy == PolicyKind::Failover)
        && let Some(p) = primary_of(cands).region
        && let Some(holder) = cands.iter().find(|c| c.region == p)
    {
        routable.retain(|c| c.region != p);
        routable.insert(0, holder);
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
            role: Role::Active,
            epoch: 0,
        }
    }

    fn with_role(name: &str, order: usize, role: Role, epoch: u64) -> Candidate {
        Candidate {
            role,
            epoch,
            ..c(name, order)
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
            Access::Read,
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
            Access::Read,
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
            Access::Read,
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
            Access::Read,
            &v,
            Some((48.9, 2.35)),
            &[],
            0.0,
        );
        assert_eq!(names(&ch)[0], "eu-west-1");
        // Unknown client: lowest RTT.
        let ch = choose(
            PolicyKind::Latency,
            NoHealthy::FailOpen,
            Access::Read,
            &v,
            None,
            &[],
            0.0,
        );
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
                Access::Read,
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
            Access::Read,
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
            Access::Read,
            &v,
            None,
            &[],
            0.0,
        );
        assert_eq!((names(&open), open.mode), (vec!["a", "b"], Mode::FailOpen));
        let closed = choose(
            PolicyKind::Failover,
            NoHealthy::FailClosed,
            Access::Read,
            &v,
            None,
            &[],
            0.0,
        );
        assert_eq!((closed.ranked.len(), closed.mode), (0, Mode::FailClosed));
        let lkg = choose(
            PolicyKind::Failover,
            NoHealthy::LastKnownGood,
            Access::Read,
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
                Access::Read,
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

    fn pick(policy: PolicyKind, access: Access, v: &[Candidate], rand: f64) -> Choice {
        choose(policy, NoHealthy::FailOpen, access, v, None, &[], rand)
    }

    /// us-east-1 is nearest, eu-west-1 holds the lease, ap-southeast-1 is passive.
    fn fenced_cluster() -> Vec<Candidate> {
        let mut us = with_role("us-east-1", 0, Role::Standby, 4);
        us.rtt_ms = Some(1.0);
        let mut eu = with_role("eu-west-1", 1, Role::Primary, 4);
        eu.rtt_ms = Some(80.0);
        let mut ap = with_role("ap-southeast-1", 2, Role::Passive, 4);
        ap.rtt_ms = Some(0.5);
        vec![us, eu, ap]
    }

    #[test]
    fn writes_go_to_the_primary_first_and_reads_to_the_nearest() {
        let v = fenced_cluster();
        for policy in [
            PolicyKind::Latency,
            PolicyKind::Failover,
            PolicyKind::Weighted,
        ] {
            for i in 0..10 {
                let ch = pick(policy, Access::Write, &v, f64::from(i) / 10.0);
                assert_eq!(names(&ch), ["eu-west-1", "us-east-1"], "{policy:?}");
            }
        }
        // Reads: the usual policy, the standby included, the passive region never.
        let ch = pick(PolicyKind::Latency, Access::Read, &v, 0.0);
        assert_eq!(names(&ch), ["us-east-1", "eu-west-1"]);
        // A weight-0 primary still takes the writes (no other region can).
        let mut w = v.clone();
        w[1].weight = 0;
        assert_eq!(
            names(&pick(PolicyKind::Weighted, Access::Write, &w, 0.9)),
            ["eu-west-1", "us-east-1"]
        );
        assert_eq!(
            names(&pick(PolicyKind::Weighted, Access::Read, &w, 0.9)),
            ["us-east-1"]
        );
    }

    #[test]
    fn a_failover_name_follows_the_lease_holder() {
        let mut v = fenced_cluster();
        // DNS and reads of a failover name: the primary, wherever it is in the order.
        let ch = pick(PolicyKind::Failover, Access::Read, &v, 0.0);
        assert_eq!(names(&ch), ["eu-west-1", "us-east-1"]);
        // The lease moves to us-east-1 (epoch 5); eu-west-1 is a standby now.
        v[0].role = Role::Primary;
        v[0].epoch = 5;
        v[1].role = Role::Standby;
        v[1].epoch = 5;
        assert_eq!(
            names(&pick(PolicyKind::Failover, Access::Read, &v, 0.0)),
            ["us-east-1", "eu-west-1"]
        );
        // The primary unhealthy: the configured order, as before fencing.
        v[0].healthy = false;
        assert_eq!(
            names(&pick(PolicyKind::Failover, Access::Read, &v, 0.0)),
            ["eu-west-1"]
        );
        // Nobody claims the lease (active-active): unchanged behaviour.
        let plain = vec![c("a", 0), c("b", 1)];
        assert_eq!(
            names(&pick(PolicyKind::Failover, Access::Write, &plain, 0.0)),
            ["a", "b"]
        );
    }

    #[test]
    fn two_primaries_the_higher_epoch_wins_and_both_are_reported() {
        let v = vec![
            with_role("a", 0, Role::Primary, 3),
            with_role("b", 1, Role::Primary, 4),
            with_role("c", 2, Role::Standby, 4),
        ];
        let p = primary_of(&v);
        assert_eq!(p.region.as_ref().map(|r| r.as_str()), Some("b"));
        assert_eq!(p.epoch, 4);
        let claims: Vec<(&str, u64)> = p.claims.iter().map(|(r, e)| (r.as_str(), *e)).collect();
        assert_eq!(claims, [("b", 4), ("a", 3)]);
        assert_eq!(
            names(&pick(PolicyKind::Failover, Access::Write, &v, 0.0)),
            ["b", "a", "c"]
        );
        // An unhealthy or drained claimant is no claim.
        let mut v2 = v.clone();
        v2[1].drained = true;
        assert_eq!(primary_of(&v2).claims.len(), 1);
        assert_eq!(
            names(&pick(PolicyKind::Latency, Access::Write, &v2, 0.0))[0],
            "a"
        );
    }

    #[test]
    fn passive_regions_are_never_chosen() {
        let mut v = vec![
            with_role("a", 0, Role::Passive, 1),
            with_role("b", 1, Role::Primary, 1),
        ];
        assert_eq!(
            names(&pick(PolicyKind::Failover, Access::Read, &v, 0.0)),
            ["b"]
        );
        // Nothing healthy: fail-open and last-known-good still leave the passive region out.
        for x in &mut v {
            x.healthy = false;
        }
        assert_eq!(
            names(&pick(PolicyKind::Failover, Access::Write, &v, 0.0)),
            ["b"]
        );
        let lkg = choose(
            PolicyKind::Failover,
            NoHealthy::LastKnownGood,
            Access::Read,
            &v,
            None,
            &[RegionId::new("a").unwrap(), RegionId::new("b").unwrap()],
            0.0,
        );
        assert_eq!(names(&lkg), ["b"]);
        v[1].role = Role::Passive;
        let open = pick(PolicyKind::Failover, Access::Read, &v, 0.0);
        assert_eq!((open.ranked.len(), open.mode), (0, Mode::FailOpen));
    }
}
