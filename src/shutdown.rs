//! Stopping in order: every background task holds a [`Shutdown`] handle, and [`Tasks::stop`] tells them all
//! and waits for each to finish, so `serve` returns only once nothing of the server is left running.
//!
//! Two phases: first the API stops accepting and open requests and sockets end (the app's own signal, see
//! `state::App`); then [`Tasks::stop`] ends what served them (the SQLite writer, the bus, the jobs), which
//! must outlive the last request.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A background task's view of the stop signal (cheap to clone; one per task).
#[derive(Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

impl Shutdown {
    /// A handle that never fires, for tools that run a store without a server around it.
    pub fn never() -> Shutdown {
        let (sender, receiver) = watch::channel(false);
        // Keeping the sender alive for the program's life is the point: the signal can never come.
        std::mem::forget(sender);
        Shutdown { receiver }
    }

    pub fn is_shutdown(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Completes once the stop signal is given (at once if it was given already).
    pub async fn recv(&mut self) {
        // An error means the sender is gone, which only happens once everything is stopping anyway.
        let _ = self.receiver.wait_for(|stop| *stop).await.map(|_| ());
    }
}

/// The server's background tasks, by name, and their stop signal.
pub struct Tasks {
    sender: watch::Sender<bool>,
    running: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks { sender: watch::channel(false).0, running: Mutex::default() }
    }
}

impl Tasks {
    /// A handle for a task that is not started through [`Tasks::spawn`] (it must still end on the signal).
    pub fn handle(&self) -> Shutdown {
        Shutdown { receiver: self.sender.subscribe() }
    }

    /// Starts a background task; `task` gets the stop signal and must end soon after it fires.
    pub fn spawn<F, Fut>(&self, name: &'static str, task: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task(self.handle()));
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|(_, handle)| !handle.is_finished());
        running.push((name, handle));
    }

    /// Tells every task to stop and waits for each, at most `grace` in all; names what did not stop.
    pub async fn stop(&self, grace: Duration) -> Vec<&'static str> {
        let _ = self.sender.send(true);
        let running = std::mem::take(&mut *self.running.lock().unwrap_or_else(|p| p.into_inner()));
        let deadline = tokio::time::Instant::now() + grace;
        let mut stuck = Vec::new();
        for (name, mut handle) in running {
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::error!(task = name, error = %err, "a background task failed"),
                Err(_) => {
                    handle.abort();
                    stuck.push(name);
                }
            }
        }
        stuck
    }

    /// Waits, at most `grace`, for the tasks named `name` to end by themselves (tasks that stop on the app's
    /// own signal and still need the stores on their way out, such as the jobs releasing their leases, so
    /// they must be done before [`Tasks::stop`] ends the stores' tasks); aborts them after that.
    pub async fn join(&self, name: &'static str, grace: Duration) {
        let named: Vec<(&'static str, JoinHandle<()>)> = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            let (named, others) = std::mem::take(&mut *running).into_iter().partition(|(n, _)| *n == name);
            *running = others;
            named
        };
        let deadline = tokio::time::Instant::now() + grace;
        for (_, mut handle) in named {
            if tokio::time::timeout_at(deadline, &mut handle).await.is_err() {
                handle.abort();
                tracing::warn!(task = name, "a background task outlived the shutdown grace period");
            }
        }
    }

    /// Names of the tasks still running, for tests.
    pub fn running(&self) -> Vec<&'static str> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.iter().filter(|(_, handle)| !handle.is_finished()).map(|(name, _)| *name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_joins_every_task_and_names_the_stuck_ones() {
        let tasks = Tasks::default();
        tasks.spawn("polite", |mut shutdown| async move { shutdown.recv().await });
        tasks.spawn("deaf", |_| async move { tokio::time::sleep(Duration::from_secs(60)).await });
        assert_eq!(tasks.running().len(), 2);
        let stuck = tasks.stop(Duration::from_millis(200)).await;
        assert_eq!(stuck, vec!["deaf"]);
        assert!(tasks.running().is_empty());
        assert!(tasks.handle().is_shutdown());
    }

    #[tokio::test]
    async fn join_waits_for_the_named_tasks_only() {
        let tasks = Tasks::default();
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("early", |_| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done.send(());
        });
        tasks.spawn("late", |mut shutdown| async move { shutdown.recv().await });
        tasks.join("early", Duration::from_secs(5)).await;
        assert!(finished.await.is_ok(), "join returned only once the named task had finished");
        assert_eq!(tasks.running(), vec!["late"], "the others keep running until stop");
        assert!(tasks.stop(Duration::from_secs(1)).await.is_empty());
    }
}
