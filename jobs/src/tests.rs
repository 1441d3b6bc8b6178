use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// A lease as the stores implement it: one holder until the ttl runs out, growing tokens.
#[derive(Default)]
struct TestLease {
    held: Mutex<HashMap<String, (String, u64, Instant)>>,
    tokens: AtomicU64,
}

#[async_trait]
impl Lease for TestLease {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<u64>, LeaseError> {
        let mut held = self.held.lock().unwrap();
        if held.get(name).is_some_and(|(_, _, until)| *until > Instant::now()) {
            return Ok(None);
        }
        let token = self.tokens.fetch_add(1, Ordering::SeqCst) + 1;
        held.insert(name.to_owned(), (holder.to_owned(), token, Instant::now() + ttl));
        Ok(Some(token))
    }
    async fn renew(&self, name: &str, holder: &str, token: u64, ttl: Duration) -> Result<bool, LeaseError> {
        let mut held = self.held.lock().unwrap();
        match held.get_mut(name) {
            Some((who, t, until)) if who == holder && *t == token && *until > Instant::now() => {
                *until = Instant::now() + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    async fn release(&self, name: &str, holder: &str, token: u64) -> Result<(), LeaseError> {
        let mut held = self.held.lock().unwrap();
        if held.get(name).is_some_and(|(who, t, _)| who == holder && *t == token) {
            held.remove(name);
        }
        Ok(())
    }
}

/// Every run: which instance, in which second, under which fencing token.
type Runs = Arc<Mutex<Vec<(&'static str, u64, u64)>>>;

/// Counts its runs, by the instance that ran it and the second it ran in.
struct Counting {
    instance: &'static str,
    runs: Runs,
}

#[async_trait]
impl Job for Counting {
    async fn run(&self, grant: Grant) -> Result<(), JobError> {
        let second = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        self.runs.lock().unwrap().push((self.instance, second, grant.fencing_token));
        Ok(())
    }
}

fn runner(lease: &Arc<TestLease>, instance: &'static str, runs: &Runs) -> Runner {
    let mut runner = Runner::new(lease.clone(), instance, Duration::from_secs(2));
    runner.add("count", "* * * * * *", Arc::new(Counting { instance, runs: runs.clone() })).unwrap();
    runner
}

#[test]
fn schedules_are_six_field_cron() {
    assert!(check_schedule("0 */5 * * * *").is_ok());
    assert!(check_schedule("* * * * * *").is_ok());
    assert!(check_schedule("every minute").is_err());
    assert!(check_schedule("").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tick_runs_once_across_instances_and_a_dead_holder_hands_over() {
    let lease = Arc::new(TestLease::default());
    let runs = Arc::new(Mutex::new(Vec::new()));
    let (stop_a, stopped_a) = tokio::sync::oneshot::channel::<()>();
    let a = tokio::spawn(runner(&lease, "a", &runs).run(async move {
        let _ = stopped_a.await;
    }));
    let (stop_b, stopped_b) = tokio::sync::oneshot::channel::<()>();
    let b = tokio::spawn(runner(&lease, "b", &runs).run(async move {
        let _ = stopped_b.await;
    }));
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let seen = runs.lock().unwrap().clone();
    let mut seconds: Vec<u64> = seen.iter().map(|(_, second, _)| *second).collect();
    seconds.dedup();
    assert_eq!(seconds.len(), seen.len(), "a tick ran twice: {seen:?}");
    assert!((3..=5).contains(&seen.len()), "one run per tick: {seen:?}");
    let holder = seen[0].0;
    assert!(seen.iter().all(|(who, _, _)| *who == holder), "the holder keeps the job: {seen:?}");

    // The holder dies without giving its lease up: the other takes over within one lease period.
    let (dead, survivor, survivor_stop) = if holder == "a" { (a, b, stop_b) } else { (b, a, stop_a) };
    dead.abort();
    let died = Instant::now();
    let taken_over = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if runs.lock().unwrap().iter().any(|(who, _, _)| *who != holder) {
            break died.elapsed();
        }
        assert!(died.elapsed() < Duration::from_secs(5), "nobody took the job over");
    };
    assert!(taken_over <= Duration::from_secs(2) + Duration::from_millis(1500), "took {taken_over:?}");
    let seen = runs.lock().unwrap().clone();
    let tokens: Vec<u64> = seen.iter().map(|(_, _, token)| *token).collect();
    assert!(tokens.windows(2).all(|w| w[0] <= w[1]), "fencing tokens only grow: {seen:?}");

    // A graceful stop gives the lease up at once.
    let _ = survivor_stop.send(());
    survivor.await.unwrap().unwrap();
    assert!(lease.held.lock().unwrap().is_empty(), "the lease was released");
}
