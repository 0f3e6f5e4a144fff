//! The `atoll router` client commands (`atoll_cli::router`: `drain`, `undrain`, `weight`,
//! `status`) against a running router, with its admin token from a file. The router itself is
//! tested in `crates/atoll-router/tests/`, whose helpers this file shares.

#[path = "../../atoll-router/tests/common/mod.rs"]
mod common;

use atoll_cli::router::{self as cli, AdminClientArgs, RouterArgs, RouterCommand, ServeArgs};
use common::*;

fn client_args(
    h: &atoll_router::runtime::RouterHandle,
    token_file: &std::path::Path,
) -> AdminClientArgs {
    AdminClientArgs {
        admin: format!("http://{}", h.admin_addr()),
        admin_token_file: Some(token_file.to_path_buf()),
    }
}

fn args(command: RouterCommand) -> RouterArgs {
    RouterArgs {
        command: Some(command),
        serve: ServeArgs {
            config: None,
            proxy: None,
            dns: None,
            admin: None,
            state_dir: None,
            proxy_name: None,
            admin_token_file: None,
            proxy_connect_timeout: None,
            proxy_request_timeout: None,
            proxy_idle_timeout: None,
            proxy_max_body_bytes: None,
            global_timeout: 2000,
            drill_state_dir: None,
        },
    }
}

#[tokio::test]
async fn client_commands_drive_a_running_router() {
    let a = FakeRegion::start("a").await;
    let b = FakeRegion::start("b").await;
    let cfg = config(&[("a", a.addr), ("b", b.addr)], FAST_ROUTER);
    let dir = tempfile::tempdir().unwrap();
    let h = start_router(cfg, dir.path(), None).await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let c = client_args(&h, &token_file);

    cli::run(args(RouterCommand::Drain {
        region: "a".into(),
        reason: "maintenance".into(),
        for_: Some("30m".into()),
        client: c.clone(),
    }))
    .await
    .unwrap();
    let p = h.state().persisted().unwrap();
    assert_eq!(p.drains["a"].reason, "maintenance");
    assert!(p.drains["a"].until_ms.is_some());

    cli::run(args(RouterCommand::Weight {
        name: "w".into(),
        region: "b".into(),
        weight: 4,
        client: c.clone(),
    }))
    .await
    .unwrap();
    assert_eq!(
        h.state().persisted().unwrap().weights["w.atoll.test."]["b"],
        4
    );

    cli::run(args(RouterCommand::Status {
        json: false,
        client: c.clone(),
    }))
    .await
    .unwrap();

    cli::run(args(RouterCommand::Undrain {
        region: "a".into(),
        client: c.clone(),
    }))
    .await
    .unwrap();
    assert!(h.state().persisted().unwrap().drains.is_empty());

    // Errors carry the router's message.
    let e = cli::run(args(RouterCommand::Undrain {
        region: "mars-1".into(),
        client: c.clone(),
    }))
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("unknown region") && e.contains("ATOLL-UNKNOWN-REGION"),
        "{e}"
    );

    // A wrong token is refused.
    std::fs::write(&token_file, "wrong").unwrap();
    let e = cli::run(args(RouterCommand::Status {
        json: true,
        client: c,
    }))
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("401"), "{e}");
    h.shutdown().await;
}
