//! The end-to-end tests of the `atoll` binary, in one test binary: each module is one area
//! (`cli`, `replication`, `fencing`, ...) and starts real `atoll` processes on loopback ports.
//! One binary instead of one per file: each would link the whole workspace again, which costs
//! CI minutes and gigabytes of disk; nextest still runs every test in its own process.

mod common;

mod adding;
mod cli;
mod crash;
mod demo;
mod expiry;
mod fencing;
mod global_view;
mod grafana;
mod owned;
mod partition;
mod peer_tls;
mod ratelimit;
mod readiness;
mod removing;
mod replication;
mod resp;
mod restart;
mod router_e2e;
mod router_fencing;
mod session;
mod shutdown;
mod strong;
mod tidy;
mod truncation;
mod walkthrough;
mod watch;
