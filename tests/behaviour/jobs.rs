//! Background jobs: two scale-out instances run each tick of each job once between them (counted from
//! their own metrics), a killed lease holder's jobs move to the other instance within one lease period, and
//! the inactive-device sweep removes what has been idle for the configured days (both backends).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::both_backends;
use crate::harness::*;
use crate::messages::ready_user;
use crate::processes::{Process, spawn_server};

both_backends!(the_inactive_device_sweep_removes_idle_devices_and_accounts);

const JOBS: [&str; 5] = ["reap_envelopes", "reap_codes", "reap_contact_tokens", "reap_attachments", "push_retries"];
const LEASE_SECONDS: u64 = 3;

/// The metrics address a process printed at start-up.
fn metrics_url(process: &Process) -> String {
    let output = process.output();
    let start = output.find("metrics on ").map(|i| i + "metrics on ".len()).expect("metrics address printed");
    output[start..].split_whitespace().next().expect("address").to_owned()
}

/// Successful runs per job, from a process's `/metrics`.
async fn runs(http: &reqwest::Client, url: &str) -> HashMap<String, u64> {
    let text = http.get(url).send().await.expect("metrics").text().await.expect("text");
    let mut runs = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("sealpost_job_runs_total{") && l.contains("outcome=\"ok\"")) {
        let job = line.split("job=\"").nth(1).and_then(|rest| rest.split('"').next()).expect("job label");
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("value");
        runs.insert(job.to_owned(), value as u64);
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_run_each_tick_once_and_a_dead_holder_hands_over() {
    let dir = temp_dir();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let every_second = "* * * * * *".to_owned();
    let envs = vec![
        ("SEALPOST_DATA_DIR", dir.display().to_string()),
        ("SEALPOST_DATABASE_URL", database_url()),
        ("SEALPOST_DATABASE_SCHEMA", schema.clone()),
        ("SEALPOST_REDIS_URL", redis_url()),
        ("SEALPOST_REDIS_KEY_PREFIX", format!("{schema}:")),
        ("SEALPOST_JOB_REAP_SCHEDULE", every_second.clone()),
        ("SEALPOST_JOB_PUSH_RETRY_SCHEDULE", every_second),
        ("SEALPOST_JOB_LEASE_SECONDS", LEASE_SECONDS.to_string()),
    ];
    let first = spawn_server(&envs).await;
    let second = spawn_server(&envs).await;
    let urls = [metrics_url(&first), metrics_url(&second)];
    let http = reqwest::Client::new();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let before = [runs(&http, &urls[0]).await, runs(&http, &urls[1]).await];
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = [runs(&http, &urls[0]).await, runs(&http, &urls[1]).await];
    let ticks = window.elapsed().as_secs_f64();
    let mut holders = Vec::new();
    for job in JOBS {
        let delta = |i: usize| after[i].get(job).copied().unwrap_or(0) - before[i].get(job).copied().unwrap_or(0);
        let (a, b) = (delta(0), delta(1));
        eprintln!("jobs: {job}: {a} + {b} runs in {ticks:.1} s of one tick a second");
        // One run per tick in all (give or take the tick at either edge of the window), not one per instance.
        assert!(
            (a + b) as f64 >= ticks - 2.0 && (a + b) as f64 <= ticks + 1.0,
            "{job}: {a} + {b} runs in {ticks:.1} s"
        );
        assert!(a == 0 || b == 0, "{job}: one instance holds the lease and runs every tick ({a} and {b})");
        holders.push(if a > 0 { 0 } else { 1 });
    }

    // Kill the holder of reap_envelopes: the other instance runs it within one lease period (plus a tick).
    let holder = holders[0];
    let mut processes = [first, second];
    let survivor_url = urls[1 - holder].clone();
    let baseline = runs(&http, &survivor_url).await.get("reap_envelopes").copied().unwrap_or(0);
    processes[holder].child.kill().await.expect("SIGKILL");
    let killed = Instant::now();
    let taken_over = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if runs(&http, &survivor_url).await.get("reap_envelopes").copied().unwrap_or(0) > baseline {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(LEASE_SECONDS + 5), "no instance took the job over");
    };
    eprintln!("jobs: the lease holder was killed; the other instance ran the job {taken_over:?} later");
    assert!(
        taken_over <= Duration::from_millis(LEASE_SECONDS * 1000 + 1800),
        "taken over after {taken_over:?}, more than one lease period ({LEASE_SECONDS} s) and a tick"
    );

    // A graceful stop gives the leases up at once (no instance would have to wait for them to expire).
    let survivor = &mut processes[1 - holder];
    let pid = survivor.child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(status.success());
    let exited = tokio::time::timeout(Duration::from_secs(15), survivor.child.wait()).await;
    assert!(exited.expect("stopped in time").expect("exit status").success(), "{}", survivor.output());
    let (fences, leases): (Vec<String>, Vec<String>) =
        redis_keys(&format!("{schema}:lease:*")).await.into_iter().partition(|key| key.ends_with(":fence"));
    assert_eq!(fences.len(), JOBS.len(), "every job's fencing counter stays: {fences:?}");
    assert!(leases.is_empty(), "leases left behind after a graceful stop: {leases:?}");

    for process in &mut processes {
        let _ = process.child.kill().await;
    }
    drop_schema(&schema).await;
    delete_prefix(&format!("{schema}:")).await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn the_inactive_device_sweep_removes_idle_devices_and_accounts(backend: Backend) {
    let server = start_with(backend, |c| {
        c.inactive_device_days = 30;
        c.job_inactive_devices_schedule = "* * * * * *".into();
    })
    .await;
    let day = 86_400_000;
    let long_ago = sealpost::domain::round_to_day(sealpost::domain::now_millis()) - 30 * day;
    let yesterday = sealpost::domain::round_to_day(sealpost::domain::now_millis()) - day;
    let accounts = &server.app.storage.accounts;
    let config = &server.config;
    // Active primary, idle laptop: the laptop goes.
    let alice = ready_user(&server).await;
    let alice_laptop = server.add_device(&alice, 21).await;
    set_last_seen(config, &alice_laptop, long_ago).await;
    // Everything idle: the account goes.
    let bob = ready_user(&server).await;
    set_last_seen(config, &bob, long_ago).await;
    // Idle primary, active laptop (seen yesterday): all stays.
    let carol = ready_user(&server).await;
    let carol_laptop = server.add_device(&carol, 22).await;
    set_last_seen(config, &carol, long_ago).await;
    set_last_seen(config, &carol_laptop, yesterday).await;
    // Seen 29 days ago: not yet.
    let dave = ready_user(&server).await;
    set_last_seen(config, &dave, long_ago + day).await;

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alice_devices = server.get("/v1/devices", alice.bearer()).await.expect(200);
        let bob_reply = server.get("/v1/devices", bob.bearer()).await;
        if alice_devices["devices"].as_array().map(Vec::len) == Some(1) && bob_reply.status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "the sweep did not remove the idle laptop and account");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.get("/v1/devices", alice_laptop.bearer()).await.expect_error(401, "unauthorized");
    let carol_devices = server.get("/v1/devices", carol.bearer()).await.expect(200);
    assert_eq!(carol_devices["devices"].as_array().map(Vec::len), Some(2), "an account in use keeps its primary");
    server.get("/v1/devices", dave.bearer()).await.expect(200);
    let bob_aci = sealpost::domain::Aci::parse(&bob.aci).expect("aci");
    assert!(accounts.account(bob_aci).await.expect("read").is_none(), "the idle account is deleted whole");
    server.stop().await;
}

/// Sets a device's last-seen day in the database itself (the store only ever moves it forward).
async fn set_last_seen(config: &sealpost::config::Config, user: &User, day: i64) {
    use sqlx::Connection;
    let device = i64::from(user.device_id);
    match &config.database_schema {
        Some(schema) => {
            let mut conn = sqlx::PgConnection::connect(&database_url()).await.expect("postgres");
            let sql =
                format!("UPDATE \"{schema}\".devices SET last_seen_day = $1 WHERE aci = $2::uuid AND device_id = $3");
            let done = sqlx::query(&sql).bind(day).bind(&user.aci).bind(device as i32).execute(&mut conn).await;
            assert_eq!(done.expect("update").rows_affected(), 1);
        }
        None => {
            let path = config.data_dir.join("sealpost.db");
            let mut conn =
                sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.expect("sqlite");
            let sql = "UPDATE devices SET last_seen_day = ? WHERE aci = ? AND device_id = ?";
            let done = sqlx::query(sql).bind(day).bind(&user.aci).bind(device).execute(&mut conn).await;
            assert_eq!(done.expect("update").rows_affected(), 1);
        }
    }
}
