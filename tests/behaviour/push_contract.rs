//! The storage contract of push: subscriptions (durable, gone with their device) and the wakeups' notes and
//! retries (ephemeral, shared by every instance), against each backend; see `contract.rs`.

use std::collections::HashSet;
use std::time::Duration;

use sealpost::domain::{Aci, DeviceId, now_millis};
use sealpost::storage::WakeupRetry;

use crate::both_backends;
use crate::contract::{Stores, account, link};
use crate::harness::*;

both_backends!(subscriptions_live_and_die_with_their_device, wakeup_notes_and_retries_are_shared_and_taken_once);

async fn subscriptions_live_and_die_with_their_device(backend: Backend) {
    let stores = Stores::open(backend).await;
    let (storage, there) = (&stores.storage, stores.elsewhere());
    let (aci, primary) = account(storage).await;
    let second = link(storage, aci).await;
    let push = &storage.push;
    let now = now_millis();
    assert_eq!(push.subscription(aci, primary.device).await.expect("read"), None);
    assert!(push.put_subscription(aci, primary.device, "https://push.example/a", now).await.expect("put"));
    assert!(push.put_subscription(aci, primary.device, "https://push.example/b", now).await.expect("replace"));
    assert!(push.put_subscription(aci, second.device, "https://push.example/c", now).await.expect("put"));
    let read = there.push.subscription(aci, primary.device).await.expect("read");
    assert_eq!(read.as_deref(), Some("https://push.example/b"), "one per device, the latest");
    assert!(
        !push.put_subscription(Aci::random(), DeviceId(1), "https://push.example/x", now).await.expect("put"),
        "no subscription without its device"
    );
    assert!(!push.put_subscription(aci, DeviceId(5), "https://push.example/x", now).await.expect("put"));

    // A gone answer for an old endpoint must not remove the one that replaced it.
    let old = Some("https://push.example/a");
    assert!(!push.delete_subscription(aci, primary.device, old).await.expect("delete"));
    assert!(push.subscription(aci, primary.device).await.expect("read").is_some());
    assert!(push.delete_subscription(aci, primary.device, Some("https://push.example/b")).await.expect("delete"));
    assert_eq!(push.subscription(aci, primary.device).await.expect("read"), None);
    assert!(!push.delete_subscription(aci, primary.device, None).await.expect("delete"), "nothing left");

    // Removing the device removes its subscription: a device that later gets its id starts without one.
    assert!(storage.accounts.delete_device(aci, second.device, now_millis()).await.expect("delete device"));
    assert_eq!(push.subscription(aci, second.device).await.expect("read"), None);
    let again = link(storage, aci).await;
    assert_eq!(again.device, second.device, "the id was handed out again");
    assert_eq!(push.subscription(aci, again.device).await.expect("read"), None);
    // And deleting the account removes every subscription of it.
    assert!(push.put_subscription(aci, primary.device, "https://push.example/d", now).await.expect("put"));
    assert!(storage.accounts.delete_account(aci).await.expect("delete account"));
    assert_eq!(push.subscription(aci, primary.device).await.expect("read"), None);
    stores.close().await;
}

async fn wakeup_notes_and_retries_are_shared_and_taken_once(backend: Backend) {
    let stores = Stores::open_with(backend, |c| c.push_retry_backlog = 3).await;
    let (here, there) = (&stores.storage.wakeups, &stores.elsewhere().wakeups);
    let aci = Aci::random();
    let (device, other) = (DeviceId(1), DeviceId(2));
    let quiet = Duration::from_secs(30);
    assert!(here.mark(aci, device, false, quiet).await.expect("mark"), "the first wakeup of a burst goes");
    assert!(!there.mark(aci, device, false, quiet).await.expect("mark"), "the rest of the burst, anywhere, does not");
    assert!(there.mark(aci, device, true, quiet).await.expect("mark"), "an urgent one still goes after a normal one");
    assert!(!here.mark(aci, device, true, quiet).await.expect("mark"), "but only once");
    assert!(!here.mark(aci, device, false, quiet).await.expect("mark"));
    assert!(here.mark(aci, other, false, quiet).await.expect("mark"), "notes are per device");
    there.clear(aci, device).await.expect("clear");
    assert!(here.mark(aci, device, false, quiet).await.expect("mark"), "a device that connected can be woken again");
    here.mark(aci, DeviceId(3), false, Duration::from_millis(300)).await.expect("mark");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(there.mark(aci, DeviceId(3), false, quiet).await.expect("mark"), "a note runs out after the quiet period");

    let now = now_millis();
    let retry = |device: u32, due_at: i64| WakeupRetry {
        aci,
        device: DeviceId(device),
        urgent: device == 2,
        expires_at: now + 3_600_000,
        attempt: device,
        due_at,
    };
    let due = [retry(1, now - 1000), retry(2, now - 10)];
    for item in &due {
        here.schedule_retry(item).await.expect("schedule");
    }
    there.schedule_retry(&retry(3, now + 60_000)).await.expect("schedule");
    // Two instances take at once: each due retry goes to exactly one of them.
    let (a, b) = tokio::join!(here.take_due(now, 10), there.take_due(now, 10));
    let mut taken: Vec<WakeupRetry> = a.expect("take").into_iter().chain(b.expect("take")).collect();
    taken.sort_by_key(|r| r.device.0);
    assert_eq!(taken, due.to_vec(), "each due retry once, as it was scheduled");
    let devices: HashSet<u32> = taken.iter().map(|r| r.device.0).collect();
    assert_eq!(devices.len(), 2);
    assert!(here.take_due(now, 10).await.expect("take").is_empty(), "taken retries are gone");
    let later = here.take_due(now + 61_000, 10).await.expect("take");
    assert_eq!(later, vec![retry(3, now + 60_000)], "a retry waits until it is due");

    // The retry list is bounded (`SEALPOST_PUSH_RETRY_BACKLOG`, 3 here), and a batch takes at most `limit`.
    for device in 4..9 {
        there.schedule_retry(&retry(device, now)).await.expect("schedule");
    }
    let first = here.take_due(now, 2).await.expect("take");
    let rest = here.take_due(now, 10).await.expect("take");
    assert_eq!((first.len(), rest.len()), (2, 1), "three kept, the others dropped; two taken, then one");
    stores.close().await;
}
