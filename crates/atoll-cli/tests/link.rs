//! The `atoll link` command line (`atoll_cli::link`) against a real link server on 127.0.0.1:
//! the client commands (`ls`, `fault add|ls|renew|rm` on links, pairs and regions), `serve` from
//! a links file and from a cluster config, and the token rules. The control API itself is tested
//! in `crates/atoll-link/tests/control.rs`, whose helpers this file shares.

#[path = "../../atoll-link/tests/common/mod.rs"]
mod common;

use atoll_cli::link::{
    self as cli, ControlArgs, FaultArgs, FaultCommand, KindArg, LinkArgs, LinkCommand,
};
use atoll_link::LinkServer;
use common::*;
use reqwest::Client;
use serde_json::Value;
use std::time::Duration;

fn control(s: &LinkServer) -> ControlArgs {
    ControlArgs {
        control: s.control_url().unwrap(),
        json: false,
        token: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_client_commands() {
    let server = server().await;
    let add = LinkArgs {
        command: LinkCommand::Fault(FaultArgs {
            command: FaultCommand::Add {
                target: LINK.into(),
                kind: KindArg::Partition,
                mode: None,
                direction: None,
                extra_ms: None,
                lease: "10m".into(),
                control: control(&server),
            },
        }),
    };
    cli::run(add).await.unwrap();
    assert_eq!(server.link_status(LINK).unwrap().faults.len(), 1);
    let ls = LinkArgs {
        command: LinkCommand::Fault(FaultArgs {
            command: FaultCommand::Ls {
                target: None,
                control: control(&server),
            },
        }),
    };
    cli::run(ls).await.unwrap();
    let renew = LinkArgs {
        command: LinkCommand::Fault(FaultArgs {
            command: FaultCommand::Renew {
                target: LINK.into(),
                id: "f-1".into(),
                lease: "1h".into(),
                control: control(&server),
            },
        }),
    };
    cli::run(renew).await.unwrap();
    assert!(server.link_status(LINK).unwrap().faults[0].remaining_ms > 3_500_000);
    let rm = |id: &str| LinkArgs {
        command: LinkCommand::Fault(FaultArgs {
            command: FaultCommand::Rm {
                target: LINK.into(),
                id: id.into(),
                control: control(&server),
            },
        }),
    };
    cli::run(rm("f-1")).await.unwrap();
    assert!(server.link_status(LINK).unwrap().faults.is_empty());
    let e = cli::run(rm("f-1")).await.unwrap_err().to_string();
    assert!(
        e.contains("ATOLL-LINK-UNKNOWN-FAULT") && e.contains("f-1"),
        "{e}"
    );
    let bad = LinkArgs {
        command: LinkCommand::Fault(FaultArgs {
            command: FaultCommand::Add {
                target: LINK.into(),
                kind: KindArg::Oneway,
                mode: None,
                direction: None,
                extra_ms: None,
                lease: "10m".into(),
                control: control(&server),
            },
        }),
    };
    let e = cli::run(bad).await.unwrap_err().to_string();
    assert!(e.contains("direction"), "{e}");
    let ls = LinkArgs {
        command: LinkCommand::Ls(control(&server)),
    };
    cli::run(ls).await.unwrap();
    server.shutdown().await;
    // Nothing listening any more: a clear error, not a hang.
    let gone = LinkArgs {
        command: LinkCommand::Ls(ControlArgs {
            control: "127.0.0.1:1".into(),
            json: false,
            token: None,
        }),
    };
    let e = cli::run(gone).await.unwrap_err().to_string();
    assert!(e.contains("cannot reach"), "{e}");
}

/// Reads the lines `serve` reports: (name, listen, upstream) per link, and the control URL.
async fn serve_lines(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    links: usize,
) -> (Vec<(String, String, String)>, String) {
    let mut out = Vec::new();
    for _ in 0..links {
        let line = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let rest = line.strip_prefix("link ").unwrap();
        let (name, rest) = rest.split_once(" listening on ").unwrap();
        let (listen, rest) = rest.split_once(" -> ").unwrap();
        let (upstream, delay) = rest.split_once(" (one-way ").unwrap();
        assert!(delay.ends_with(" ms)"), "{line}");
        out.push((name.to_string(), listen.to_string(), upstream.to_string()));
    }
    let line = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let url = line
        .strip_prefix("atoll link control on ")
        .unwrap()
        .to_string();
    (out, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_from_a_links_file_reports_and_stops() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("links.toml");
    std::fs::write(
        &path,
        format!(
            "[[links]]\nname = \"{LINK}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{echo}\"\nlatency_ms = 2\n"
        ),
    )
    .unwrap();
    let args = cli::ServeArgs {
        config: Some(path),
        cluster: None,
        listen_base: None,
        control: LOCAL.parse().unwrap(),
        token: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(cli::serve_with(
        args,
        async move {
            let _ = stop_rx.await;
        },
        move |line| {
            let _ = tx.send(line);
        },
    ));
    let (links, url) = serve_lines(&mut rx, 1).await;
    assert_eq!(links[0].0, LINK);
    assert_eq!(links[0].2, echo.to_string());
    let mut s = tokio::net::TcpStream::connect(&links[0].1).await.unwrap();
    let rtt = round_trips(&mut s, 3, 8).await;
    assert!(rtt.iter().all(|&ms| ms >= 4.0), "{rtt:?}");
    let v: Value = Client::new()
        .get(format!("{url}/v1/links"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["links"][0]["name"], LINK);
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve did not stop")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(&links[0].1).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_from_a_cluster_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("atoll.toml");
    std::fs::write(
        &path,
        "[cluster]\nname = \"demo\"\n\n[[regions]]\nname = \"us-east-1\"\napi = \"127.0.0.1:7100\"\nlocation = { lat = 38.9, lon = -77.4 }\n\n[[regions]]\nname = \"eu-west-1\"\napi = \"127.0.0.1:7101\"\nlocation = { lat = 53.3, lon = -6.3 }\n\n[[keyspaces]]\nname = \"s\"\npolicy = \"lww\"\n",
    )
    .unwrap();
    let args = cli::ServeArgs {
        config: None,
        cluster: Some(path),
        listen_base: Some(0),
        control: LOCAL.parse().unwrap(),
        token: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(cli::serve_with(
        args,
        async move {
            let _ = stop_rx.await;
        },
        move |line| {
            let _ = tx.send(line);
        },
    ));
    let (links, _url) = serve_lines(&mut rx, 2).await;
    assert_eq!(links[0].0, "us-east-1->eu-west-1");
    assert_eq!(links[0].2, "127.0.0.1:7101");
    assert_eq!(links[1].0, "eu-west-1->us-east-1");
    assert_eq!(links[1].2, "127.0.0.1:7100");
    // Then how each region reaches its peers through the links.
    let mut next = Vec::new();
    for _ in 0..3 {
        let line = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        next.push(line);
    }
    assert!(next[0].contains("--peer-via"), "{next:?}");
    assert_eq!(
        next[1],
        format!(
            "  atoll region --region us-east-1 ... --peer-via eu-west-1={}",
            links[0].1
        )
    );
    assert_eq!(
        next[2],
        format!(
            "  atoll region --region eu-west-1 ... --peer-via us-east-1={}",
            links[1].1
        )
    );
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Beyond loopback, `serve` refuses to start without a token, naming the variable and the flag
/// (the control API's own refusal is tested in `crates/atoll-link/tests/control.rs`).
#[tokio::test]
async fn serve_beyond_loopback_without_a_token_names_the_flag() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("links.toml");
    std::fs::write(
        &path,
        format!("[[links]]\nname = \"{LINK}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{echo}\"\n"),
    )
    .unwrap();
    let args = cli::ServeArgs {
        config: Some(path),
        cluster: None,
        listen_base: None,
        control: "0.0.0.0:0".parse().unwrap(),
        token: None,
    };
    let e = cli::serve_with(args, async {}, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ATOLL-LINK-TOKEN-REQUIRED") && e.contains("--token"),
        "{e}"
    );
}

/// The client sends the token from `--token` / `ATOLL_LINK_TOKEN`; without it the control API's
/// refusal is reported.
#[tokio::test]
async fn client_commands_send_the_token() {
    let server = server_with_token(TOKEN).await;
    let mut args = control(&server);
    let ls = |c: ControlArgs| LinkArgs {
        command: LinkCommand::Ls(c),
    };
    let e = cli::run(ls(args.clone())).await.unwrap_err().to_string();
    assert!(e.contains("ATOLL-UNAUTHORIZED"), "{e}");
    args.token = Some(TOKEN.to_string());
    cli::run(ls(args)).await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_pair_and_region_faults() {
    let server = mesh_server(&[US, EU, AP], &[]).await;
    let add = |target: &str, kind: KindArg| LinkArgs {
        command: LinkCommand::Fault(FaultArgs {
            command: FaultCommand::Add {
                target: target.into(),
                kind,
                mode: None,
                direction: None,
                extra_ms: None,
                lease: "10m".into(),
                control: control(&server),
            },
        }),
    };
    let rm = |target: &str, id: &str| LinkArgs {
        command: LinkCommand::Fault(FaultArgs {
            command: FaultCommand::Rm {
                target: target.into(),
                id: id.into(),
                control: control(&server),
            },
        }),
    };
    let renew = |target: &str, id: &str| LinkArgs {
        command: LinkCommand::Fault(FaultArgs {
            command: FaultCommand::Renew {
                target: target.into(),
                id: id.into(),
                lease: "1h".into(),
                control: control(&server),
            },
        }),
    };
    let ls = |target: Option<&str>| LinkArgs {
        command: LinkCommand::Fault(FaultArgs {
            command: FaultCommand::Ls {
                target: target.map(str::to_string),
                control: control(&server),
            },
        }),
    };

    cli::run(add("us-east-1<->eu-west-1", KindArg::Partition))
        .await
        .unwrap();
    assert_eq!(
        cut_links(&server),
        sorted(&[format!("{US}->{EU}"), format!("{EU}->{US}")])
    );
    cli::run(add(US, KindArg::Isolate)).await.unwrap();
    assert_eq!(cut_links(&server).len(), 4, "{:?}", cut_links(&server));
    cli::run(ls(None)).await.unwrap();
    cli::run(ls(Some(US))).await.unwrap();
    cli::run(ls(Some("eu-west-1<->us-east-1"))).await.unwrap();
    let e = cli::run(ls(Some("sa-east-1")))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("sa-east-1"), "{e}");

    // The pair, given in the other order, is the same pair.
    cli::run(renew("eu-west-1<->us-east-1", "f-1"))
        .await
        .unwrap();
    assert!(server.faults()[0].remaining_ms > 3_500_000);
    // The wrong target is refused, naming the right one, and changes nothing.
    for wrong in [US, "us-east-1->eu-west-1", "us-east-1<->ap-southeast-1"] {
        let e = cli::run(rm(wrong, "f-1")).await.unwrap_err().to_string();
        assert!(e.contains("pair `us-east-1<->eu-west-1`"), "{wrong}: {e}");
    }
    let e = cli::run(rm("us-east-1->eu-west-1", "f-2"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("region `us-east-1`"), "{e}");
    assert_eq!(server.faults().len(), 2);
    // Isolate takes a region; the server says so for a pair.
    let e = cli::run(add("us-east-1<->eu-west-1", KindArg::Isolate))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ATOLL-LINK-INVALID") && e.contains("isolate"),
        "{e}"
    );
    let e = cli::run(add("us-east-1<->us-east-1", KindArg::Partition))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("ATOLL-LINK-PAIR-SAME-REGION"), "{e}");

    cli::run(rm("us-east-1<->eu-west-1", "f-1")).await.unwrap();
    cli::run(rm(US, "f-2")).await.unwrap();
    assert!(cut_links(&server).is_empty());
    assert!(server.faults().is_empty());
    let e = cli::run(rm(US, "f-2")).await.unwrap_err().to_string();
    assert!(e.contains("ATOLL-LINK-UNKNOWN-FAULT"), "{e}");
    server.shutdown().await;
}
