//! `atoll demo`: three regions on this machine, one command.

use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The demo's regions, in port order, with approximate coordinates of their cloud regions.
pub const DEMO_REGIONS: [(&str, f64, f64); 3] = [
    ("us-east-1", 38.9, -77.4),
    ("eu-west-1", 53.3, -6.3),
    ("ap-southeast-1", 1.35, 103.8),
];

/// The cluster config the demo runs, with region i's API on `127.0.0.1:<port_base + i>`.
pub fn demo_config(port_base: u16) -> String {
    let mut out = String::from(
        "# Written by `atoll demo`.\n[cluster]\nname = \"atoll-demo\"\nmodel = \"active-active\"\n\n",
    );
    for (i, (name, lat, lon)) in DEMO_REGIONS.iter().enumerate() {
        out.push_str(&format!(
            "[[regions]]\nname = \"{name}\"\napi = \"127.0.0.1:{}\"\nlocation = {{ lat = {lat}, lon = {lon} }}\n\n",
            u32::from(port_base) + i as u32
        ));
    }
    out.push_str(
        "[[keyspaces]]\nname = \"sessions\"\npolicy = \"lww\"\n\n\
         [[keyspaces]]\nname = \"carts\"\npolicy = \"mvr\"\n\n\
         [[keyspaces]]\nname = \"ratelimits\"\npolicy = \"counter\"\n\n\
         [[keyspaces]]\nname = \"flags\"\npolicy = \"set\"\n",
    );
    out
}

struct RegionChild {
    name: String,
    child: Child,
    endpoint: String,
}

async fn start_region(
    exe: &Path,
    config: &Path,
    name: &str,
    data_dir: &Path,
) -> Result<RegionChild> {
    let log_path = data_dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut child = Command::new(exe)
        .arg("region")
        .arg("--config")
        .arg(config)
        .arg("--region")
        .arg(name)
        .arg("--data-dir")
        .arg(data_dir.join(name))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start region {name}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from region {name}"))?;
    let mut lines = BufReader::new(stdout).lines();
    let endpoint = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(url) = line.split("listening on ").nth(1) {
                return Ok::<_, anyhow::Error>(url.trim().to_string());
            }
        }
        bail!(
            "region {name} exited before it was ready; see {}",
            log_path.display()
        )
    })
    .await
    .map_err(|_| {
        anyhow!(
            "region {name} was not ready within 30 s; see {}",
            log_path.display()
        )
    })??;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(RegionChild {
        name: name.to_string(),
        child,
        endpoint,
    })
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SIGTERM: the region finishes in-flight writes and exits 0.
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

/// Runs the demo until Ctrl-C (or SIGTERM).
pub async fn run(data_dir: Option<PathBuf>, port_base: u16) -> Result<()> {
    let shutdown = crate::shutdown_signal();
    if u32::from(port_base) + DEMO_REGIONS.len() as u32 > u32::from(u16::MAX) {
        bail!(
            "--port-base {port_base} leaves no room for {} regions",
            DEMO_REGIONS.len()
        );
    }
    let (_tmp, dir) = match data_dir {
        Some(d) => {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            (None, d)
        }
        None => {
            let t = tempfile::Builder::new().prefix("atoll-demo-").tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let config_text = demo_config(port_base);
    atoll_config::Config::parse(&config_text, "demo config").map_err(anyhow::Error::msg)?;
    let config_path = dir.join("atoll.toml");
    std::fs::write(&config_path, &config_text)?;
    let exe = std::env::current_exe().context("cannot find the atoll binary")?;

    let mut regions = Vec::new();
    for (name, _, _) in DEMO_REGIONS {
        regions.push(start_region(&exe, &config_path, name, &dir).await?);
    }

    println!(
        "atoll demo: 3 regions replicating active-active (data in {})\n",
        dir.display()
    );
    for r in &regions {
        println!("  {:<16} {}", r.name, r.endpoint);
    }
    let (e0, e1, e2) = (
        &regions[0].endpoint,
        &regions[1].endpoint,
        &regions[2].endpoint,
    );
    println!(
        "\nTry:\n  atoll kv put sessions alice token-1 --endpoint {e0}\n  atoll kv get sessions alice --endpoint {e1}\n  atoll counter incr ratelimits api --endpoint {e2}\n  atoll set add flags beta dark-mode --endpoint {e1}\n  atoll kv put carts c1 apple --endpoint {e0}; atoll kv put carts c1 pear --endpoint {e2}; atoll kv get carts c1 --endpoint {e1}\n  atoll status --endpoint {e0}\n\nconfig: {}\nlogs:   {}/<region>.log\nPress Ctrl-C to stop.",
        config_path.display(),
        dir.display()
    );

    let mut exited = None;
    {
        let waits = regions.iter_mut().map(|r| Box::pin(r.child.wait()));
        let any_exit = futures_util_select_all(waits);
        tokio::select! {
            _ = shutdown => {}
            r = any_exit => { exited = Some(r); }
        }
    }
    if let Some(i) = exited {
        eprintln!(
            "region {} exited unexpectedly; stopping the demo",
            regions[i].name
        );
    }
    println!("\nstopping regions...");
    for r in &regions {
        terminate(&r.child);
    }
    let mut clean = true;
    for r in &mut regions {
        match tokio::time::timeout(Duration::from_secs(20), r.child.wait()).await {
            Ok(Ok(st)) if st.success() => {}
            Ok(Ok(st)) => {
                clean = false;
                eprintln!("region {} exited with {st}", r.name);
            }
            _ => {
                clean = false;
                let _ = r.child.kill().await;
                eprintln!("region {} did not stop in time; killed", r.name);
            }
        }
    }
    if exited.is_some() || !clean {
        bail!("the demo did not stop cleanly");
    }
    println!("stopped.");
    Ok(())
}

/// Resolves with the index of the first future to finish.
async fn futures_util_select_all<F: std::future::Future + Unpin>(
    futs: impl Iterator<Item = F>,
) -> usize {
    let mut futs: Vec<F> = futs.collect();
    std::future::poll_fn(move |cx| {
        for (i, f) in futs.iter_mut().enumerate() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(i);
            }
        }
        std::task::Poll::Pending
    })
    .await
}
